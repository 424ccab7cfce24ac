//! Chaos: aborting live links from outside the nodes, the way an operator would. Every
//! period one pair of node addresses with an established TCP connection is picked at
//! random from the OS socket table (`/proc/net/tcp`, plus IPv4-mapped entries of
//! `/proc/net/tcp6`), and `ss -K` (iproute2) destroys its sockets, which resets the peer.
//!
//! Invariants: only connections whose both ends are node addresses are touched; a kill
//! counts as successful only if `ss` exits with success and lists at least one socket it
//! destroyed; the table parser is lenient (malformed lines are skipped, never an error).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::roles::wall_ms;
use super::workload::splitmix64;

/// The `st` column value of an established TCP socket.
const TCP_ESTABLISHED: u8 = 0x01;

/// Fails with a clear message unless `ss` (iproute2) can be run.
pub fn check_ss() -> Result<(), String> {
    match Command::new("ss").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "--chaos-link-kill-ms needs `ss` from iproute2, but `ss -V` failed ({})",
            out.status
        )),
        Err(e) => Err(format!(
            "--chaos-link-kill-ms needs `ss` from iproute2 on the PATH: {e}"
        )),
    }
}

/// A running link killer.
pub struct Chaos {
    task: JoinHandle<()>,
    kills: Arc<AtomicU64>,
}

impl Chaos {
    /// Starts killing one random live link between `ips` every `period`.
    pub fn start(ips: Vec<Ipv4Addr>, period: Duration) -> Chaos {
        let kills = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(kill_links(ips, period, kills.clone()));
        Chaos { task, kills }
    }

    /// Stops killing and returns how many kills succeeded.
    pub fn stop(self) -> u64 {
        self.task.abort();
        self.kills.load(Ordering::Relaxed)
    }
}

async fn kill_links(ips: Vec<Ipv4Addr>, period: Duration, kills: Arc<AtomicU64>) {
    let mut rng = wall_ms() ^ u64::from(std::process::id()).rotate_left(32);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let ips = ips.clone();
        let pick = splitmix64(&mut rng);
        let killed = tokio::task::spawn_blocking(move || {
            let pairs = node_pairs(&established_pairs(), &ips);
            let len = u64::try_from(pairs.len()).ok().filter(|&l| l > 0)?;
            let (a, b) = *pairs.get(usize::try_from(pick % len).ok()?)?;
            // Either end will do; alternate with the pick's top bit.
            let (src, dst) = if pick >> 63 == 0 { (a, b) } else { (b, a) };
            Some(kill_link(src, dst))
        })
        .await;
        match killed {
            Ok(Some(true)) => {
                kills.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(false)) => tracing::warn!("ss -K destroyed no socket"),
            Ok(None) | Err(_) => {}
        }
    }
}

/// Destroys the TCP sockets from `src` to `dst` with `ss -K`; whether any was destroyed.
fn kill_link(src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    let out = Command::new("ss")
        .args(["-H", "-K", "-t", "src"])
        .arg(src.to_string())
        .arg("dst")
        .arg(dst.to_string())
        .output();
    match out {
        Ok(out) => {
            tracing::info!(%src, %dst, status = %out.status, "ss -K");
            out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot run ss");
            false
        }
    }
}

/// The unordered pairs of distinct addresses of `ips` with an established connection
/// between them, sorted.
fn node_pairs(pairs: &[(Ipv4Addr, Ipv4Addr)], ips: &[Ipv4Addr]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    pairs
        .iter()
        .filter(|(a, b)| a != b && ips.contains(a) && ips.contains(b))
        .map(|&(a, b)| (a.min(b), a.max(b)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Every established (local, remote) IPv4 address pair in the OS socket table; empty if
/// the table cannot be read.
fn established_pairs() -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut pairs = std::fs::read_to_string("/proc/net/tcp")
        .map(|t| parse_established_pairs(&t))
        .unwrap_or_default();
    if let Ok(text) = std::fs::read_to_string("/proc/net/tcp6") {
        pairs.extend(parse_established_pairs(&text));
    }
    pairs
}

/// Parses the text of `/proc/net/tcp` (or `/proc/net/tcp6`) into the (local, remote)
/// addresses of its established IPv4 (or IPv4-mapped) sockets. The kernel prints each
/// 32-bit address word as a host-order integer, so this decodes with the host's byte
/// order, which is right for text read on the same machine.
pub fn parse_established_pairs(text: &str) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_slot, local, remote, state) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            if u8::from_str_radix(state, 16).ok()? != TCP_ESTABLISHED {
                return None;
            }
            Some((parse_ipv4(local)?, parse_ipv4(remote)?))
        })
        .collect()
}

/// Decodes `HEX_ADDRESS:PORT` into its IPv4 address (8 hex digits, or 32 for an
/// IPv4-mapped IPv6 address).
fn parse_ipv4(field: &str) -> Option<Ipv4Addr> {
    let (hex, _port) = field.split_once(':')?;
    match hex.len() {
        8 => parse_word(hex).map(Ipv4Addr::from),
        32 => {
            let mut octets = [0u8; 16];
            for (i, chunk) in octets.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&parse_word(hex.get(i * 8..i * 8 + 8)?)?);
            }
            Ipv6Addr::from(octets).to_ipv4_mapped()
        }
        _ => None,
    }
}

/// 8 hex digits printed from a host-order `u32` holding 4 bytes in network order.
fn parse_word(hex: &str) -> Option<[u8; 4]> {
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_established_pairs() {
        let text = "\
  sl  local_address rem_address   st tx_queue
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000
   1: 0700007F:9C41 0100007F:D2F0 01 00000000:00000000
   2: 0200007F:8002 0300007F:8003 06 00000000:00000000
garbage
   3: ZZZZZZZZ:0016 0100000A:C350 01
   4: 0000000000000000FFFF00000500007F:1F90 0000000000000000FFFF00000100007F:A000 01 0
";
        let ip = |d| Ipv4Addr::new(127, 0, 0, d);
        assert_eq!(
            parse_established_pairs(text),
            [(ip(7), ip(1)), (ip(5), ip(1))]
        );
    }

    #[test]
    fn keeps_distinct_node_pairs_once() {
        let ip = |d| Ipv4Addr::new(127, 0, 0, d);
        let pairs = [
            (ip(1), ip(2)),
            (ip(2), ip(1)),
            (ip(3), ip(3)),
            (ip(1), ip(9)),
            (ip(3), ip(1)),
        ];
        let nodes = [ip(1), ip(2), ip(3)];
        assert_eq!(node_pairs(&pairs, &nodes), [(ip(1), ip(2)), (ip(1), ip(3))]);
    }
}
