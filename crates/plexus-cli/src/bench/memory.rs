//! This process's resident memory, read from `/proc/self/status`.
//!
//! Owns reading `VmHWM` (peak resident set size, "high water mark") and
//! `VmRSS` (current resident set size) so the bench can report memory use.
//!
//! Invariants: values are returned in bytes (the kernel reports kB, meaning
//! KiB); `None` means the value is unavailable (not Linux, field missing,
//! malformed or overflowing), never a guessed number.

/// Peak resident set size of this process in bytes (`VmHWM`), or `None` if
/// `/proc/self/status` is unreadable or lacks the field.
pub fn peak_rss_bytes() -> Option<u64> {
    status_field_bytes(&read_status()?, "VmHWM")
}

/// Resident set size of this process now, in bytes (`VmRSS`), or `None` if
/// `/proc/self/status` is unreadable or lacks the field.
pub fn rss_bytes() -> Option<u64> {
    status_field_bytes(&read_status()?, "VmRSS")
}

fn read_status() -> Option<String> {
    std::fs::read_to_string("/proc/self/status").ok()
}

/// Finds the line `<field>:   <number> kB` in the text of a
/// `/proc/<pid>/status` file and returns the number converted to bytes.
///
/// Returns `None` if the field is absent, its value is not a whole number,
/// its unit is not `kB`, or the byte count overflows `u64`.
pub fn status_field_bytes(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name != field {
            return None;
        }
        let mut parts = value.split_whitespace();
        let number: u64 = parts.next()?.parse().ok()?;
        match (parts.next(), parts.next()) {
            (Some(unit), None) if unit.eq_ignore_ascii_case("kB") => number.checked_mul(1024),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Name:\tplexus
Umask:\t0022
State:\tR (running)
VmPeak:\t  123456 kB
VmSize:\t  120000 kB
VmHWM:\t    8192 kB
VmRSS:\t    6144 kB
RssAnon:\t    2048 kB
Threads:\t4
";

    #[test]
    fn parses_sample() {
        assert_eq!(status_field_bytes(SAMPLE, "VmHWM"), Some(8192 * 1024));
        assert_eq!(status_field_bytes(SAMPLE, "VmRSS"), Some(6144 * 1024));
        // A prefix of another field's name must not match.
        assert_eq!(status_field_bytes(SAMPLE, "Vm"), None);
        assert_eq!(status_field_bytes(SAMPLE, "VmSwap"), None);
        // Fields without a kB unit are not sizes.
        assert_eq!(status_field_bytes(SAMPLE, "Threads"), None);
    }

    #[test]
    fn rejects_malformed_values() {
        assert_eq!(status_field_bytes("VmHWM:\tlots kB\n", "VmHWM"), None);
        assert_eq!(status_field_bytes("VmHWM:\t12 MB\n", "VmHWM"), None);
        assert_eq!(status_field_bytes("VmHWM:\n", "VmHWM"), None);
        assert_eq!(
            status_field_bytes("VmHWM:\t18446744073709551615 kB\n", "VmHWM"),
            None
        );
        assert_eq!(status_field_bytes("", "VmHWM"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn real_process_values() {
        let peak = peak_rss_bytes().expect("VmHWM available on Linux");
        assert!(peak > 0, "peak {peak}");
        // Not compared with the peak: the kernel updates VmHWM lazily, so VmRSS can
        // be ahead of it for a while.
        let now = rss_bytes().expect("VmRSS available on Linux");
        assert!(now > 0, "now {now}");
    }
}
