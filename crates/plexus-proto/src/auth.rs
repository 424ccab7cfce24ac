//! Proof of membership: the cluster's shared secret, and the HMAC-SHA256 proofs each side
//! of a new connection gives that it knows it, without revealing it.
//!
//! The handshake (driven in `node::handshake`): the dialler sends a `Challenge` (protocol
//! version, cluster, its node id and incarnation, a fresh nonce); the acceptor answers with
//! its own `Challenge` and a `Proof`; the dialler checks that proof, then sends its own
//! `Proof` and its `Hello`. Each proof is an HMAC, under the secret, of the whole
//! [`Transcript`] (version, cluster, both node ids, both incarnations, both nonces) and the
//! prover's role, so:
//! - only a holder of the secret can make one (forgery);
//! - a proof is good for one handshake only: the other side's nonce is fresh each time, so
//!   a recorded handshake replayed later fails (replay);
//! - it names both ends, their incarnations and the roles, so it cannot be reflected back
//!   or moved to another pair of nodes, incarnation or cluster.
//!
//! Invariants: the secret is never written to logs (its `Debug` hides it) nor sent; proofs
//! are compared in constant time; nonces never repeat within a node's run (a counter under
//! the secret and the incarnation) nor across runs (the incarnation is fresh each start).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::NodeId;

/// Bytes of a nonce and of a proof.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof (an HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// The longest secret accepted (a file this long is surely not a secret).
pub const MAX_SECRET_LEN: usize = 4096;

/// A nonce: fresh for each handshake.
pub type Nonce = [u8; NONCE_LEN];
/// A proof of knowledge of the secret over one handshake's transcript.
pub type Proof = [u8; PROOF_LEN];

/// The cluster's shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A secret that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a cluster secret must have {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes, this one has {0}")]
pub struct BadSecret(pub usize);

impl Secret {
    /// A secret of these bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, BadSecret> {
        let bytes = bytes.into();
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&bytes.len()) {
            return Err(BadSecret(bytes.len()));
        }
        Ok(Self(bytes))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    /// The `counter`-th nonce of the run of `node` as `incarnation`.
    pub fn nonce(&self, node: NodeId, incarnation: u64, counter: u64) -> Nonce {
        let mut mac = self.mac();
        mac.update(b"plexus nonce v1");
        mac.update(&node.0.to_le_bytes());
        mac.update(&incarnation.to_le_bytes());
        mac.update(&counter.to_le_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The proof `role` gives over `transcript`.
    pub fn prove(&self, role: Role, transcript: &Transcript) -> Proof {
        self.transcript_mac(role, transcript)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` is the one `role` gives over `transcript` (in constant time).
    pub fn verify(&self, role: Role, transcript: &Transcript, proof: &Proof) -> bool {
        self.transcript_mac(role, transcript)
            .verify_slice(proof)
            .is_ok()
    }

    fn transcript_mac(&self, role: Role, t: &Transcript) -> Hmac<Sha256> {
        let mut mac = self.mac();
        mac.update(b"plexus link proof v1");
        mac.update(&[role as u8]);
        mac.update(&t.version.to_le_bytes());
        mac.update(&t.cluster.to_le_bytes());
        for side in [&t.dialler, &t.acceptor] {
            mac.update(&side.node.0.to_le_bytes());
            mac.update(&side.incarnation.to_le_bytes());
            mac.update(&side.nonce);
        }
        mac
    }
}

/// Which side of a connection proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that dialled.
    Dialler = 1,
    /// The side that accepted.
    Acceptor = 2,
}

/// What one side said of itself in its `Challenge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Its node id.
    pub node: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its fresh nonce.
    pub nonce: Nonce,
}

/// Everything a handshake's proofs cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transcript {
    /// The protocol version both speak.
    pub version: u16,
    /// The cluster both belong to.
    pub cluster: u64,
    /// The dialler's claim.
    pub dialler: Claim,
    /// The acceptor's claim.
    pub acceptor: Claim,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Transcript {
        let claim = |node, nonce| Claim {
            node: NodeId(node),
            incarnation: 7,
            nonce: [nonce; NONCE_LEN],
        };
        Transcript {
            version: 1,
            cluster: 9,
            dialler: claim(1, 1),
            acceptor: claim(2, 2),
        }
    }

    #[test]
    fn a_proof_checks_only_under_the_same_secret_role_and_transcript() {
        let secret = Secret::new(vec![5u8; 32]).expect("valid");
        let other = Secret::new(vec![6u8; 32]).expect("valid");
        let t = transcript();
        let proof = secret.prove(Role::Dialler, &t);
        assert!(secret.verify(Role::Dialler, &t, &proof));
        assert!(!other.verify(Role::Dialler, &t, &proof), "another secret");
        assert!(!secret.verify(Role::Acceptor, &t, &proof), "reflected");
        let mut fresh = t;
        fresh.acceptor.nonce[0] ^= 1;
        assert!(!secret.verify(Role::Dialler, &fresh, &proof), "replayed");
        let mut moved = t;
        moved.dialler.incarnation += 1;
        assert!(!secret.verify(Role::Dialler, &moved, &proof), "another run");
        let mut cluster = t;
        cluster.cluster += 1;
        assert!(
            !secret.verify(Role::Dialler, &cluster, &proof),
            "another cluster"
        );
    }

    #[test]
    fn nonces_differ_by_counter_and_run_and_secrets_have_bounds() {
        let secret = Secret::new(vec![5u8; 16]).expect("valid");
        let a = secret.nonce(NodeId(1), 3, 0);
        assert_ne!(a, secret.nonce(NodeId(1), 3, 1));
        assert_ne!(a, secret.nonce(NodeId(1), 4, 0));
        assert_ne!(a, secret.nonce(NodeId(2), 3, 0));
        assert_eq!(Secret::new(vec![0u8; 15]), Err(BadSecret(15)));
        assert!(Secret::new(vec![0u8; MAX_SECRET_LEN + 1]).is_err());
        assert_eq!(format!("{secret:?}"), "Secret(16 bytes)");
    }
}
