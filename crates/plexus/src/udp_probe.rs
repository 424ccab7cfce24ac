//! Whether anything listens on a peer's UDP port: what a refused TCP connection tells at
//! once, for QUIC links. A host whose port is closed answers a datagram with ICMP "port
//! unreachable", which Linux reports on a *connected* UDP socket as a refused connection;
//! quinn's own socket is not connected and ignores such answers, so without this a dial to
//! a node whose process is gone only times out.
//!
//! The probe is one datagram of a single byte, too short to be a QUIC packet: a QUIC
//! endpoint that does listen drops it without answering.
//!
//! Invariants: the probe waits at most the time it is given; it says "closed" only on the
//! kernel's report of a refusal, never on silence (a host that is down, or drops the probe,
//! is not a closed port).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Whether `addr`'s host said, within `wait`, that nothing listens on its UDP port; the
/// probe leaves from `local` when the address families match.
pub(crate) async fn port_closed(local: IpAddr, addr: SocketAddr, wait: Duration) -> bool {
    let from = if local.is_ipv4() == addr.is_ipv4() {
        SocketAddr::new(local, 0)
    } else if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let Ok(socket) = UdpSocket::bind(from).await else {
        return false;
    };
    if socket.connect(addr).await.is_err() {
        return false;
    }
    let refused = |e: &std::io::Error| e.kind() == ErrorKind::ConnectionRefused;
    if let Err(e) = socket.send(&[0]).await {
        return refused(&e);
    }
    let mut answer = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, socket.recv(&mut answer)).await,
        Ok(Err(e)) if refused(&e)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_refused_and_a_listening_one_is_not() {
        let local = IpAddr::from([127, 0, 0, 1]);
        let listening = UdpSocket::bind((local, 0)).await.expect("bind");
        let open = listening.local_addr().expect("address");
        let closed = {
            let gone = UdpSocket::bind((local, 0)).await.expect("bind");
            gone.local_addr().expect("address")
        };
        let wait = Duration::from_millis(500);
        assert!(port_closed(local, closed, wait).await);
        assert!(!port_closed(local, open, Duration::from_millis(100)).await);
        // The listener got the probe: one byte, nothing a QUIC endpoint would parse.
        let mut buf = [0u8; 8];
        let (n, _) = listening.recv_from(&mut buf).await.expect("probe");
        assert_eq!(n, 1);
    }
}
