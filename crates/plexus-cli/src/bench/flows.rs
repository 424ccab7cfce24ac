//! UDP flows per node address, from the kernel's connection tracking: how QUIC links are
//! counted from the OS (a QUIC node has one UDP socket whatever its peers, so the socket
//! table says nothing about how many it talks to).
//!
//! The kernel tracks flows only while some firewall rule asks for it: for the run, a
//! table of its own (`inet plexus_bench_flows`) holds one rule that only counts new
//! flows, and goes when the run ends.
//!
//! Invariants: the table is removed when its [`FlowTracking`] guard goes, whatever the
//! run's outcome; a flow counts for a node address only if its other end is a node
//! address too; the parser is lenient (lines it cannot read are skipped).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The table the run adds, and removes.
const TABLE: &str = "plexus_bench_flows";

/// Keeps the kernel tracking flows until dropped.
pub struct FlowTracking;

impl FlowTracking {
    /// Adds the counting rule (needs `nft` and the right to change the firewall).
    pub fn start() -> Result<FlowTracking, String> {
        let rules = format!(
            "table inet {TABLE} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }}\n}}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("counting UDP flows needs `nft` (nftables): {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .map_err(|e| format!("nft: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nft could not add the flow-counting table: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(FlowTracking)
    }
}

impl Drop for FlowTracking {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", TABLE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The most other node addresses any of `ips` has a tracked UDP flow with, per the
/// connection tables in `tables` (`<dir>/nf_conntrack`).
pub fn max_udp_peers_in(ips: &[Ipv4Addr], tables: &[PathBuf]) -> usize {
    let nodes: HashSet<Ipv4Addr> = ips.iter().copied().collect();
    let mut peers: HashMap<Ipv4Addr, HashSet<Ipv4Addr>> = HashMap::new();
    for dir in tables {
        let Ok(text) = std::fs::read_to_string(dir.join("nf_conntrack")) else {
            continue;
        };
        for (a, b) in text.lines().filter_map(udp_flow) {
            if a != b && nodes.contains(&a) && nodes.contains(&b) {
                peers.entry(a).or_default().insert(b);
                peers.entry(b).or_default().insert(a);
            }
        }
    }
    peers.values().map(HashSet::len).max().unwrap_or(0)
}

/// The two ends of a tracked UDP flow, from one line of the table.
fn udp_flow(line: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let mut words = line.split_whitespace();
    if words.nth(2)? != "udp" {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
    };
    Some((field("src=")?, field("dst=")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ends_of_udp_flows_only() {
        let udp = "ipv4     2 udp      17 29 src=127.0.0.1 dst=127.0.0.2 sport=41000 dport=42000 src=127.0.0.2 dst=127.0.0.1 sport=42000 dport=41000 mark=0 use=2";
        assert_eq!(
            udp_flow(udp),
            Some((Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)))
        );
        let tcp =
            "ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.2 sport=1 dport=2";
        assert_eq!(udp_flow(tcp), None);
        assert_eq!(udp_flow("garbage"), None);
    }

    #[test]
    fn counts_distinct_node_peers_per_address() {
        let dir = std::env::temp_dir().join(format!("plexus-flows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let line = |a: u8, b: u8, port: u16| {
            format!(
                "ipv4 2 udp 17 29 src=127.0.0.{a} dst=127.0.0.{b} sport={port} dport=9 mark=0\n"
            )
        };
        let table = [line(1, 2, 1), line(1, 2, 2), line(1, 3, 3), line(1, 9, 4)].concat();
        std::fs::write(dir.join("nf_conntrack"), table).expect("write");
        let ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
        // 127.0.0.1 talks to 2 and 3 (9 is not a node); the others to 1 each.
        assert_eq!(max_udp_peers_in(&ips, std::slice::from_ref(&dir)), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
