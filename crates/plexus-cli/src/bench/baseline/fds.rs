//! How many file descriptors this process may open, read from `/proc/self/limits`, and
//! whether a baseline that needs one connection per channel fits under that limit.
//!
//! Invariants: the soft limit ("Max open files", first number) is the one that counts;
//! `unlimited` reads as `u64::MAX`; an unreadable or malformed file gives `None`, never a
//! guessed number, and then nothing is skipped for want of descriptors.

/// Share of the soft limit a baseline may plan to use; the rest is left for the runtime,
/// listeners and whatever else the process holds.
const USABLE_SHARE: f64 = 0.9;

/// This process's soft limit of open files, if `/proc/self/limits` tells it.
pub fn soft_limit() -> Option<u64> {
    parse_open_files(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// The soft limit in the `Max open files` line of a `/proc/<pid>/limits` text.
pub fn parse_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// Why a run needing `connections` TCP connections with both ends in this process (and
/// `per_connection` descriptors for each) cannot run under `limit`: `None` if it fits.
pub fn too_many(connections: u64, per_connection: u64, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    let fds = connections.saturating_mul(per_connection);
    if (fds as f64) <= limit as f64 * USABLE_SHARE {
        return None;
    }
    Some(format!(
        "skipped: would need {connections} connections ({fds} file descriptors in one process), the fd limit is {limit}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max open files            1024                 524288               files     \n";

    #[test]
    fn reads_the_soft_limit() {
        assert_eq!(parse_open_files(LIMITS), Some(1024));
        let unlimited = LIMITS.replace("1024   ", "unlimited");
        assert_eq!(parse_open_files(&unlimited), Some(u64::MAX));
        assert_eq!(parse_open_files("Max cpu time 1 1 seconds"), None);
        assert_eq!(parse_open_files("Max open files  lots"), None);
    }

    #[test]
    fn skips_only_past_ninety_percent() {
        assert_eq!(too_many(460, 2, Some(1024)), None);
        let note = too_many(512, 2, Some(1024)).expect("over the limit");
        assert_eq!(
            note,
            "skipped: would need 512 connections (1024 file descriptors in one process), the fd limit is 1024"
        );
        assert_eq!(too_many(1 << 40, 2, None), None);
    }
}
