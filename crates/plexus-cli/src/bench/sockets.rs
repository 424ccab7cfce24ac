//! Counting established TCP connections per local IPv4 address, read from
//! the kernel's socket table (`/proc/net/tcp`, plus IPv4-mapped entries of
//! `/proc/net/tcp6`).
//!
//! The bench uses this to check that each pair of nodes shares exactly one
//! TCP link: every node listens on its own loopback address `127.0.0.(i+1)`,
//! so the number of established sockets whose *local* address is a node's
//! address tells how many link ends that node holds.
//!
//! Invariants and caveats:
//! - only sockets in state `01` (`TCP_ESTABLISHED`) are counted; listening,
//!   `TIME_WAIT`, closing sockets etc. are ignored;
//! - a connection between two local addresses appears twice in the table
//!   (once per end), and each end is counted under its own local address;
//! - the table covers the whole network namespace, not just this process:
//!   other programs' sockets on the same addresses are counted too;
//! - Linux picks `127.0.0.1` (the `src` of the `local 127.0.0.0/8` route) as
//!   the source address of an unbound socket connecting to any `127.x.y.z`,
//!   so a connecting end is only counted under its node's address if it was
//!   bound to that address before `connect`;
//! - the kernel prints the table while it changes, so a socket can appear twice in one
//!   read; each (local, remote) pair is counted once;
//! - the parser is lenient: malformed lines are skipped, never an error.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The `st` column value of an established TCP socket.
const TCP_ESTABLISHED: u8 = 0x01;

/// Reads `DIR/tcp` (and, if present, `DIR/tcp6`) and returns the number of
/// ESTABLISHED TCP sockets per local IPv4 address; `dir` is `/proc/net`, or
/// `/proc/PID/net` for the network namespace of process PID.
///
/// IPv6 sockets count only when their local address is IPv4-mapped
/// (`::ffff:a.b.c.d`, i.e. dual-stack sockets carrying IPv4 traffic). An
/// error reading `tcp` is returned; a missing or unreadable `tcp6` (IPv6
/// disabled) is ignored.
pub fn established_by_local_ip_in(
    dir: &std::path::Path,
) -> std::io::Result<HashMap<Ipv4Addr, usize>> {
    let mut counts = parse_proc_net_tcp(&std::fs::read_to_string(dir.join("tcp"))?);
    if let Ok(text) = std::fs::read_to_string(dir.join("tcp6")) {
        for (ip, n) in parse_proc_net_tcp(&text) {
            *counts.entry(ip).or_insert(0) += n;
        }
    }
    Ok(counts)
}

/// Parses the text of `/proc/net/tcp` (or `/proc/net/tcp6`) and returns the
/// number of ESTABLISHED sockets per local IPv4 address.
///
/// Each data line looks like
/// `  0: 0100007F:1F90 0100007F:A2C4 01 ...`: the local `address:port`, the
/// remote `address:port` and the state, all in hex. The kernel prints each
/// 32-bit word of the (network-order) address as a host-order integer, so on
/// little-endian machines `127.0.0.1` appears as `0100007F`; this function
/// decodes with the host's byte order and is therefore correct for text read
/// on the same machine. 8-digit addresses are IPv4; 32-digit addresses are
/// IPv6 and count only if IPv4-mapped. The header line and malformed lines
/// are skipped.
pub fn parse_proc_net_tcp(text: &str) -> HashMap<Ipv4Addr, usize> {
    // The kernel walks a changing hash table while printing it, so one socket may be
    // printed twice in one read: count each (local, remote) pair once.
    let mut seen = HashSet::new();
    let mut counts = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_slot), Some(local), Some(remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if u8::from_str_radix(state, 16).ok() != Some(TCP_ESTABLISHED) {
            continue;
        }
        let Some((addr, _port)) = local.split_once(':') else {
            continue;
        };
        let Some(ip) = parse_local_ipv4(addr) else {
            continue;
        };
        if seen.insert((local, remote)) {
            *counts.entry(ip).or_insert(0) += 1;
        }
    }
    counts
}

/// Every established (local, remote) IPv4 (or IPv4-mapped) address pair in the OS socket
/// table, as printed (a socket printed twice appears twice); empty if the table cannot be
/// read.
pub fn established_pairs() -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut pairs = std::fs::read_to_string("/proc/net/tcp")
        .map(|t| parse_established_pairs(&t))
        .unwrap_or_default();
    if let Ok(text) = std::fs::read_to_string("/proc/net/tcp6") {
        pairs.extend(parse_established_pairs(&text));
    }
    pairs
}

/// Parses the text of `/proc/net/tcp` (or `/proc/net/tcp6`) into the (local, remote)
/// addresses of its established IPv4 (or IPv4-mapped) sockets.
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
            let ip = |field: &str| parse_local_ipv4(field.split_once(':')?.0);
            Some((ip(local)?, ip(remote)?))
        })
        .collect()
}

/// The `st` column value of a listening TCP socket.
const TCP_LISTEN: u8 = 0x0A;

/// Every listening IPv4 (or IPv4-mapped) address and port in the OS socket table; empty if
/// the table cannot be read.
pub fn listening() -> Vec<std::net::SocketAddrV4> {
    let mut found = std::fs::read_to_string("/proc/net/tcp")
        .map(|t| parse_listening(&t))
        .unwrap_or_default();
    if let Ok(text) = std::fs::read_to_string("/proc/net/tcp6") {
        found.extend(parse_listening(&text));
    }
    found
}

/// Parses the text of `/proc/net/tcp` (or `/proc/net/tcp6`) into the addresses of its
/// listening IPv4 (or IPv4-mapped) sockets.
pub fn parse_listening(text: &str) -> Vec<std::net::SocketAddrV4> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_slot, local, _remote, state) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            if u8::from_str_radix(state, 16).ok()? != TCP_LISTEN {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(std::net::SocketAddrV4::new(parse_local_ipv4(addr)?, port))
        })
        .collect()
}

fn parse_local_ipv4(hex: &str) -> Option<Ipv4Addr> {
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

/// Parses 8 hex digits printed from a host-order `u32` holding 4 bytes in
/// network order, and returns those 4 bytes.
fn parse_word(hex: &str) -> Option<[u8; 4]> {
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample as printed on a little-endian (x86) machine.
    #[cfg(target_endian = "little")]
    const SAMPLE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0700007F:9C41 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D2F0 0700007F:9C41 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0200007F:8000 0300007F:8001 01 00000000:00000000 00:00000000 00000000  1000        0 1004 1 0000000000000000 20 4 30 10 -1
   4: 0300007F:8001 0200007F:8000 01 00000000:00000000 00:00000000 00000000  1000        0 1005 1 0000000000000000 20 4 30 10 -1
   5: 0200007F:8002 0300007F:8003 06 00000000:00000000 00:00000000 00000000  1000        0 0 3 0000000000000000
   6: 0202000A:0016 0100000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1006 1 0000000000000000 20 4 30 10 -1
garbage line
   7: ZZZZZZZZ:0016 0100000A:C350 01
";

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_sample() {
        let counts = parse_proc_net_tcp(SAMPLE);
        let ip = |a, b, c, d| Ipv4Addr::new(a, b, c, d);
        // Line 0 is LISTEN (0A), line 5 TIME_WAIT (06): neither counts.
        assert_eq!(counts.get(&ip(127, 0, 0, 1)), Some(&1));
        assert_eq!(counts.get(&ip(127, 0, 0, 7)), Some(&1));
        assert_eq!(counts.get(&ip(127, 0, 0, 2)), Some(&1));
        assert_eq!(counts.get(&ip(127, 0, 0, 3)), Some(&1));
        assert_eq!(counts.get(&ip(10, 0, 2, 2)), Some(&1));
        assert_eq!(counts.len(), 5, "{counts:?}");
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn finds_the_listening_sockets() {
        let found = parse_listening(SAMPLE);
        assert_eq!(
            found,
            vec![std::net::SocketAddrV4::new(
                Ipv4Addr::new(127, 0, 0, 1),
                0x1F90
            )]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_ipv4_mapped_tcp6_lines() {
        let text = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000500007F:1F90 0000000000000000FFFF00000100007F:A000 01 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 20 4 30 10 -1
   1: 00000000000000000000000001000000:1F91 00000000000000000000000001000000:A001 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000500007F:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 100 0 0 10 0
";
        let counts = parse_proc_net_tcp(text);
        // Only the established IPv4-mapped socket counts; `::1` is not IPv4.
        assert_eq!(counts.get(&Ipv4Addr::new(127, 0, 0, 5)), Some(&1));
        assert_eq!(counts.len(), 1, "{counts:?}");
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_socket_printed_twice_counts_once() {
        let line = "   1: 0700007F:9C41 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1\n";
        let other = "   2: 0700007F:9C42 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1\n";
        let text = format!("header\n{line}{other}{line}");
        let counts = parse_proc_net_tcp(&text);
        assert_eq!(counts.get(&Ipv4Addr::new(127, 0, 0, 7)), Some(&2));
    }

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
    fn empty_and_header_only_text() {
        assert!(parse_proc_net_tcp("").is_empty());
        assert!(parse_proc_net_tcp(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        )
        .is_empty());
    }

    /// Opens a real loopback connection whose two ends both have local
    /// address 127.0.0.7 and checks the kernel table shows both.
    #[tokio::test]
    async fn counts_a_real_loopback_connection() {
        let node = Ipv4Addr::new(127, 0, 0, 7);
        let listener = std::net::TcpListener::bind((node, 0)).expect("bind listener on 127.0.0.7");
        let target = listener.local_addr().expect("listener address");

        // Bind the connecting end to 127.0.0.7 too: an unbound socket would
        // get 127.0.0.1 as its source address (see the module docs).
        let socket = tokio::net::TcpSocket::new_v4().expect("create socket");
        socket
            .bind((node, 0).into())
            .expect("bind client on 127.0.0.7");
        let client = socket.connect(target).await.expect("connect");
        let (server, _) = listener.accept().expect("accept");
        assert_eq!(client.local_addr().expect("client address").ip(), node);
        assert_eq!(server.local_addr().expect("server address").ip(), node);

        let counts = established_by_local_ip_in(std::path::Path::new("/proc/net"))
            .expect("read /proc/net/tcp");
        let n = counts.get(&node).copied().unwrap_or(0);
        assert!(
            n >= 2,
            "expected >= 2 established sockets on {node}, got {n}"
        );
        drop((client, server));
    }
}
