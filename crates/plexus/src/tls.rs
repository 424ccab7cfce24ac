//! Optional mutual TLS 1.3 on links (rustls with the ring provider): encryption where the
//! network is shared, and a second proof of identity beside the secret.
//!
//! Every node holds a certificate, signed by the cluster's certificate authority, that
//! names it `node-<id>.plexus` (a DNS name in its subject alternative names). A dialler
//! checks that the acceptor's certificate names the node it dialled; an acceptor requires
//! a client certificate from the same authority, finds which member it names, and the core
//! then refuses a `Challenge` that claims any other node (see `plexus_proto::node`).
//!
//! Invariants: only TLS 1.3 is offered or accepted; a certificate that names no member,
//! or another node than the one claimed, never gets a link; the handshake is bounded by
//! the node's handshake timeout (the caller's).

use std::path::Path;
use std::sync::Arc;

use plexus_proto::NodeId;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name a node's certificate carries.
pub fn node_name(node: NodeId) -> String {
    format!("node-{}.plexus", node.0)
}

/// Why a TLS identity cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificates or the key.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// A node's certificate chain and key, and the cluster's certificate authority.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    ca: Vec<CertificateDer<'static>>,
}

impl TlsIdentity {
    /// Reads PEM files: the node's certificate (chain), its private key, and the
    /// authority's certificate.
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        let file_error = |path: &Path, e: &dyn std::fmt::Display| TlsError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| file_error(path, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(path, &e))?;
            if certs.is_empty() {
                return Err(file_error(path, &"no certificate in it"));
            }
            Ok(certs)
        };
        let chain = certs(cert)?;
        let ca = certs(ca)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, &e))?;
        Ok(Self {
            chain,
            key: Arc::new(key),
            ca,
        })
    }

    /// The same from PEM text.
    pub fn from_pem(cert: &str, key: &str, ca: &str) -> Result<Self, TlsError> {
        let parse = |what: &str, pem: &str| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Setup(format!("{what}: {e}")))
        };
        Ok(Self {
            chain: parse("certificate", cert)?,
            key: Arc::new(
                PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| TlsError::Setup(format!("key: {e}")))?,
            ),
            ca: parse("authority", ca)?,
        })
    }
}

/// Bytes of records a connection may hold before the socket takes them: a link writer's
/// whole batch, so it is encrypted in one go rather than in 64 KiB pieces.
const SEND_BUFFER: usize = 1 << 20;

/// The TLS side of a node: how it dials and how it accepts.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// A link's stream once TLS is up.
pub(crate) type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;
/// The same, on the accepting side.
pub(crate) type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

impl Tls {
    /// Client and server configurations for `identity`: TLS 1.3 only, the peer's
    /// certificate required and checked against the authority.
    pub(crate) fn new(identity: &TlsIdentity) -> Result<Self, TlsError> {
        let (client, server) = configs(identity)?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// TLS over a connection dialled to `peer`, whose certificate must name it.
    pub(crate) async fn connect(
        &self,
        peer: NodeId,
        stream: TcpStream,
    ) -> std::io::Result<ClientStream> {
        let name = ServerName::try_from(node_name(peer))
            .map_err(|e| std::io::Error::other(format!("node name: {e}")))?;
        let mut stream = self.connector.connect(name, stream).await?;
        stream.get_mut().1.set_buffer_limit(Some(SEND_BUFFER));
        Ok(stream)
    }

    /// TLS over an accepted connection; returns it and the member (of `members`) its
    /// client certificate names, or an error if it names none.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        members: impl IntoIterator<Item = NodeId>,
    ) -> std::io::Result<(ServerStream, NodeId)> {
        let mut stream = self.acceptor.accept(stream).await?;
        stream.get_mut().1.set_buffer_limit(Some(SEND_BUFFER));
        let named = {
            let (_, connection) = stream.get_ref();
            let cert = connection
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| std::io::Error::other("the peer sent no certificate"))?;
            certificate_node(cert, members)
        };
        let node = named.ok_or_else(|| {
            std::io::Error::other("the peer's certificate names no member of the cluster")
        })?;
        Ok((stream, node))
    }
}

/// The rustls client and server configurations of `identity`: TLS 1.3 only, the peer's
/// certificate required and checked against the authority.
pub(crate) fn configs(identity: &TlsIdentity) -> Result<(ClientConfig, ServerConfig), TlsError> {
    let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
    let provider: Arc<CryptoProvider> = Arc::new(provider());
    let mut roots = RootCertStore::empty();
    for ca in &identity.ca {
        roots.add(ca.clone()).map_err(|e| setup(&e))?;
    }
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| setup(&e))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| setup(&e))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| setup(&e))?;
    Ok((client, server))
}

/// ring's suites, AES-128-GCM first: as strong as a link needs, and the cheapest on
/// processors with AES instructions (links carry every byte of every job).
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite;
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// The member whose name `cert` carries, if any.
pub(crate) fn certificate_node(
    cert: &CertificateDer<'_>,
    members: impl IntoIterator<Item = NodeId>,
) -> Option<NodeId> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    members.into_iter().find(|&node| {
        ServerName::try_from(node_name(node))
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}
