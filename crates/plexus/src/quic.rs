//! QUIC links (quinn over UDP): the same links as over TCP, each on one bidirectional
//! QUIC stream of a QUIC connection per node pair, under the cluster's TLS 1.3 identities.
//!
//! A link's frames keep their single order (sequence numbers, acknowledgements and resume
//! are the core's, per link), so a link is one stream; the connection's own loss recovery
//! and congestion control replace TCP's. A dialler opens the stream and speaks first (the
//! proof handshake's `Challenge`), which is what makes the stream known to the acceptor.
//!
//! Invariants: every connection runs mutual TLS 1.3 with the node certificates of the
//! TLS module (a dialler checks the acceptor's name; an acceptor finds the member the
//! client certificate names, and the core binds the link to it); a connection that stays
//! silent longer than [`IDLE_TIMEOUT`] is closed by quinn, which ends its link like a
//! broken TCP connection; a stream's halves keep its connection alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plexus_proto::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;

use crate::tls::{certificate_node, configs, node_name, TlsError, TlsIdentity};

/// The application protocol both sides name in the TLS handshake.
const ALPN: &[u8] = b"plexus/1";

/// A connection silent this long is closed (the core's pings keep a live one busy).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes a stream may receive ahead of its reader, and a connection in all: a link's
/// whole batch of frames and more, as TCP's autotuned buffers would allow.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// A node's QUIC endpoint: its UDP socket, and how it dials and accepts.
#[derive(Clone, Debug)]
pub(crate) struct Quic {
    endpoint: Endpoint,
}

/// A link's stream: its two halves, and the connection they belong to.
pub(crate) struct LinkStream {
    /// What the peer sends.
    pub(crate) recv: RecvStream,
    /// What this node sends.
    pub(crate) send: SendStream,
    /// The connection (kept for its peer's address).
    pub(crate) connection: Connection,
}

impl Quic {
    /// An endpoint on `addr` for a node of `identity`.
    pub(crate) fn bind(addr: SocketAddr, identity: &TlsIdentity) -> Result<Quic, QuicError> {
        let (mut client, mut server) = configs(identity)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        server.alpn_protocols = vec![ALPN.to_vec()];
        let setup = |e: &dyn std::fmt::Display| QuicError::Setup(e.to_string());
        let transport = Arc::new(transport_config().map_err(|e| setup(&e))?);
        let server_crypto = QuicServerConfig::try_from(server).map_err(|e| setup(&e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let client_crypto = QuicClientConfig::try_from(client).map_err(|e| setup(&e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let mut endpoint = Endpoint::server(server, addr).map_err(QuicError::Bind)?;
        endpoint.set_default_client_config(client);
        Ok(Quic { endpoint })
    }

    /// The address the endpoint's socket is bound to.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Connects to `peer` at `addr` (whose certificate must name it) and opens the link's
    /// stream.
    pub(crate) async fn connect(
        &self,
        peer: NodeId,
        addr: SocketAddr,
    ) -> std::io::Result<LinkStream> {
        let connecting = self
            .endpoint
            .connect(addr, &node_name(peer))
            .map_err(std::io::Error::other)?;
        let connection = connecting.await.map_err(std::io::Error::other)?;
        let (send, recv) = connection.open_bi().await.map_err(std::io::Error::other)?;
        Ok(LinkStream {
            recv,
            send,
            connection,
        })
    }

    /// The next connection a peer dials, or `None` once the endpoint is closed.
    pub(crate) async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Closes every connection at once.
    pub(crate) fn close(&self) {
        self.endpoint.close(0u32.into(), b"node shut down");
    }
}

/// Completes an accepted connection, finds the member of `members` its client
/// certificate names, and accepts the link's stream.
pub(crate) async fn accept(
    incoming: quinn::Incoming,
    members: Vec<NodeId>,
) -> std::io::Result<(LinkStream, NodeId)> {
    let connection = incoming.await.map_err(std::io::Error::other)?;
    let identity = connection
        .peer_identity()
        .ok_or_else(|| std::io::Error::other("the peer sent no certificate"))?;
    let certificates = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| std::io::Error::other("the peer's identity is not a certificate chain"))?;
    let first = certificates
        .first()
        .ok_or_else(|| std::io::Error::other("the peer sent no certificate"))?;
    let node = certificate_node(first, members).ok_or_else(|| {
        std::io::Error::other("the peer's certificate names no member of the cluster")
    })?;
    let (send, recv) = connection
        .accept_bi()
        .await
        .map_err(std::io::Error::other)?;
    Ok((
        LinkStream {
            recv,
            send,
            connection,
        },
        node,
    ))
}

fn transport_config() -> Result<quinn::TransportConfig, quinn::VarIntBoundsExceeded> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into()?))
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(u64::from(CONNECTION_WINDOW));
    Ok(transport)
}

/// Why a QUIC endpoint cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The TLS identity cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// quinn refused the configuration.
    #[error("QUIC setup: {0}")]
    Setup(String),
    /// The UDP socket could not be bound.
    #[error("binding the QUIC socket: {0}")]
    Bind(std::io::Error),
}
