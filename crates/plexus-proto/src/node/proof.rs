//! The first step of every connection: both sides prove they know the cluster's secret
//! (see [`crate::auth`] for the proofs and what they defend against).
//!
//! Message sequence, before any `Hello`:
//! 1. dialler → acceptor: `Challenge` (version, cluster, dialler's id and incarnation,
//!    nonce D);
//! 2. acceptor → dialler: `Challenge` (the same of the acceptor, nonce A), then `Proof`
//!    (HMAC of the transcript as acceptor);
//! 3. dialler: checks the acceptor's proof, then → `Proof` (as dialler), then `Hello`;
//! 4. acceptor: checks the dialler's proof, then reads the `Hello` (see `handshake`).
//!
//! With TLS, the runtime tells the core which node an accepted connection's certificate
//! names (`certify_link`); its `Challenge` may claim no other.
//!
//! Invariants: until both proofs checked, a connection changes nothing but its own
//! record: no peer is created, declared restarted or resumed, no channel opened; any
//! other frame (or a frame longer than a `Challenge`) closes it with
//! `GoAway(Unauthenticated)`. The `Hello` that follows must name the node and incarnation
//! that were proved.

use super::state::{Auth, LinkId};
use super::{LinkCause, NodeCore};
use crate::auth::{Claim, Role, Transcript};
use crate::frame::{Frame, GoAwayCode, PROTOCOL_VERSION};

/// The longest frame body (kind byte included) accepted before the proofs: a `Challenge`.
pub(super) const MAX_UNPROVED_FRAME: usize = 1 + 2 + 8 + 4 + 8 + crate::auth::NONCE_LEN;

type LinkError = (GoAwayCode, LinkCause);

fn unauthenticated(reason: String) -> LinkError {
    (
        GoAwayCode::Unauthenticated,
        LinkCause::Unauthenticated(reason),
    )
}

impl NodeCore {
    /// Our claim for a new handshake, with a nonce never used before.
    pub(super) fn fresh_claim(&mut self) -> Claim {
        self.nonces += 1;
        Claim {
            node: self.config.node,
            incarnation: self.config.incarnation,
            nonce: self
                .config
                .secret
                .nonce(self.config.node, self.config.incarnation, self.nonces),
        }
    }

    /// Our `Challenge` frame for `claim`.
    pub(super) fn challenge(&self, claim: &Claim) -> Frame {
        Frame::Challenge {
            version: PROTOCOL_VERSION,
            cluster: self.config.cluster,
            node: claim.node,
            incarnation: claim.incarnation,
            nonce: claim.nonce,
        }
    }

    /// Handles a frame on `link` before both proofs checked.
    pub(super) fn handle_unproved_frame(
        &mut self,
        link: LinkId,
        frame: Frame,
    ) -> Result<(), LinkError> {
        let Some(l) = self.links.get(&link) else {
            return Ok(());
        };
        let (auth, dialled, certified) = (l.auth.clone(), l.dialled, l.certified);
        let next = match (auth, frame) {
            (_, Frame::GoAway { code }) => return Err((code, LinkCause::GoAway(code))),
            (
                Auth::AwaitDiallerChallenge,
                Frame::Challenge {
                    version,
                    cluster,
                    node,
                    incarnation,
                    nonce,
                },
            ) => {
                self.check_challenge(version, cluster, node)?;
                if certified.is_some_and(|c| c != node) {
                    return Err(unauthenticated(format!(
                        "a connection claims to be {node}, but its certificate names {}",
                        certified.map_or(String::new(), |c| c.to_string())
                    )));
                }
                let ours = self.fresh_claim();
                let transcript = Transcript {
                    version,
                    cluster,
                    dialler: Claim {
                        node,
                        incarnation,
                        nonce,
                    },
                    acceptor: ours,
                };
                let proof = self.config.secret.prove(Role::Acceptor, &transcript);
                let challenge = self.challenge(&ours);
                if let Some(l) = self.links.get_mut(&link) {
                    l.control.push_back(challenge);
                    l.control.push_back(Frame::Proof { proof });
                }
                self.wake_link(link);
                Auth::AwaitDiallerProof { transcript }
            }
            (
                Auth::AwaitAcceptorChallenge { ours },
                Frame::Challenge {
                    version,
                    cluster,
                    node,
                    incarnation,
                    nonce,
                },
            ) => {
                self.check_challenge(version, cluster, node)?;
                if dialled != Some(node) {
                    return Err((
                        GoAwayCode::UnexpectedNode,
                        LinkCause::Protocol(format!(
                            "dialled {}, but {node} answered",
                            dialled.map_or("nobody".into(), |d| d.to_string())
                        )),
                    ));
                }
                Auth::AwaitAcceptorProof {
                    transcript: Transcript {
                        version,
                        cluster,
                        dialler: ours,
                        acceptor: Claim {
                            node,
                            incarnation,
                            nonce,
                        },
                    },
                }
            }
            (Auth::AwaitAcceptorProof { transcript }, Frame::Proof { proof }) => {
                if !self
                    .config
                    .secret
                    .verify(Role::Acceptor, &transcript, &proof)
                {
                    return Err(unauthenticated(format!(
                        "{} (as dialled) gave a wrong proof: it does not hold the cluster's secret",
                        transcript.acceptor.node
                    )));
                }
                let peer = transcript.acceptor.node;
                let ours = self.config.secret.prove(Role::Dialler, &transcript);
                let hello = self.hello_for(peer);
                let claims = self.claims_for(peer);
                if let Some(l) = self.links.get_mut(&link) {
                    l.claims = Some(claims);
                    l.control.push_back(Frame::Proof { proof: ours });
                    l.control.push_back(hello);
                }
                self.wake_link(link);
                Auth::Proved {
                    node: peer,
                    incarnation: transcript.acceptor.incarnation,
                }
            }
            (Auth::AwaitDiallerProof { transcript }, Frame::Proof { proof }) => {
                if !self
                    .config
                    .secret
                    .verify(Role::Dialler, &transcript, &proof)
                {
                    return Err(unauthenticated(format!(
                        "a connection claiming to be {} gave a wrong proof: it does not hold the cluster's secret",
                        transcript.dialler.node
                    )));
                }
                Auth::Proved {
                    node: transcript.dialler.node,
                    incarnation: transcript.dialler.incarnation,
                }
            }
            (auth, other) => {
                let claimed = match auth {
                    Auth::AwaitDiallerProof { transcript } => {
                        format!(" claiming to be {}", transcript.dialler.node)
                    }
                    _ => String::new(),
                };
                return Err(unauthenticated(format!(
                    "a connection{claimed} sent {} before proving it holds the cluster's secret",
                    other.name()
                )));
            }
        };
        if let Some(l) = self.links.get_mut(&link) {
            l.auth = next;
        }
        Ok(())
    }

    /// The checks of a `Challenge` that need no secret: the same protocol and cluster, and
    /// not our own id.
    fn check_challenge(
        &self,
        version: u16,
        cluster: u64,
        node: crate::ids::NodeId,
    ) -> Result<(), LinkError> {
        if version != PROTOCOL_VERSION {
            return Err((
                GoAwayCode::VersionMismatch,
                LinkCause::Protocol(format!(
                    "peer speaks protocol version {version}, we speak {PROTOCOL_VERSION}"
                )),
            ));
        }
        if cluster != self.config.cluster {
            return Err((
                GoAwayCode::WrongCluster,
                LinkCause::Protocol(format!("peer belongs to cluster {cluster:#x}")),
            ));
        }
        if node == self.config.node {
            return Err((
                GoAwayCode::UnexpectedNode,
                LinkCause::Protocol("peer claims our own node id".into()),
            ));
        }
        Ok(())
    }
}
