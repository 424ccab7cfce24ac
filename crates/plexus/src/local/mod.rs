//! The attach protocol: processes on a machine use the machine's node through its agent
//! (`plexus agent`) over a Unix socket, with the same `Job` / `Producer` / `Consumer`
//! API as an embedded node.
//!
//! The agent owns the node (links, sessions, credit, admission, budget); an attached
//! process owns nothing but its handles. Credit holds end to end:
//! - a producer process sends a message to the agent only within a *window* the agent
//!   granted for that channel, and the agent grants a window only from credit the
//!   channel holds and has not spent, so what the agent takes from a process is always
//!   queued on the channel at once, never buffered beside it;
//! - a consumer process asks for messages (`Take`) when it has read the previous ones;
//!   the agent hands it up to 256 KiB of arrivals and keeps their credit out until the
//!   next `Take` says how many were read (the rest go back to the node, in order). So a
//!   consumer process that stops reading holds at most its pool, in the agent and in its
//!   own process together, and slows nobody else.
//!
//! A process that dies loses only its endpoints: its producers' unclosed channels abort
//! and its consumers' channels are cancelled, as when an embedded handle is dropped. An
//! agent that dies ends every attached process's waits with an error at once.
//!
//! Modules: `frames` (the byte layout), `agent` (the agent's side), `client` (a process's
//! side).

pub(crate) mod agent;
pub(crate) mod client;
pub(crate) mod frames;

pub use agent::AttachPolicy;
pub use client::AttachedNode;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use plexus_proto::{Endpoint, JobId, NodeId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::frames::{encode_control, ToAgent, VERSION};
    use crate::{AttachPolicy, Config, Membership, Node};

    /// A node listening on `ip` and serving its local socket, and a raw connection to it.
    async fn node_and_raw_process(
        ip: &str,
        name: &str,
    ) -> (Node, std::path::PathBuf, tokio::net::UnixStream) {
        let node = Node::builder()
            .config(Config::new(NodeId(0), 7))
            .listen(format!("{ip}:0").parse().expect("address"))
            .membership(Membership::new())
            .start()
            .await
            .expect("node starts");
        let path = std::env::temp_dir().join(format!("plexus-{name}-{}.sock", std::process::id()));
        node.serve_local(&path, AttachPolicy::owner_only().expect("own uid"))
            .expect("serve");
        let raw = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        (node, path, raw)
    }

    /// A process that floods its agent with requests it may not have outstanding is cut
    /// off: the agent closes its connection (and drops its endpoints) instead of queuing
    /// without bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_flooding_takes_is_cut_off() {
        let (_node, path, mut raw) = node_and_raw_process("127.0.105.1", "flood").await;
        let me = Endpoint::new(NodeId(0), 0);
        let mut out = BytesMut::new();
        encode_control(
            &ToAgent::Hello {
                version: VERSION,
                pid: 1,
            },
            &mut out,
        );
        encode_control(
            &ToAgent::OpenJob {
                req: 1,
                job: JobId(1),
                producers: vec![me],
                consumers: vec![me],
            },
            &mut out,
        );
        encode_control(
            &ToAgent::OpenConsumer {
                req: 2,
                job: JobId(1),
                slot: 0,
            },
            &mut out,
        );
        for _ in 0..64 {
            encode_control(
                &ToAgent::Take {
                    job: JobId(1),
                    slot: 0,
                    consumed: 0,
                    among: None,
                },
                &mut out,
            );
        }
        raw.write_all(&out).await.expect("write");
        // Read (and drop) what the agent says until it closes the connection.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut sink = vec![0u8; 4096];
            loop {
                match raw.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the flooding process was not cut off");
        std::fs::remove_file(&path).ok();
    }

    /// A process that sends far beyond its producer's windows is cut off once what waits
    /// for the producer exceeds what its credit could ever allow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_sending_beyond_all_credit_is_cut_off() {
        let (_node, path, mut raw) = node_and_raw_process("127.0.107.1", "sendflood").await;
        let producer = Endpoint::new(NodeId(0), 0);
        // The consumer is on a node that never comes: no credit, no window.
        let consumer = Endpoint::new(NodeId(9), 0);
        let mut out = BytesMut::new();
        encode_control(
            &ToAgent::Hello {
                version: VERSION,
                pid: 1,
            },
            &mut out,
        );
        encode_control(
            &ToAgent::OpenJob {
                req: 1,
                job: JobId(1),
                producers: vec![producer],
                consumers: vec![consumer],
            },
            &mut out,
        );
        encode_control(
            &ToAgent::OpenProducer {
                req: 2,
                job: JobId(1),
                slot: 0,
            },
            &mut out,
        );
        raw.write_all(&out).await.expect("write");
        let payload = bytes::Bytes::from(vec![0u8; 60_000]);
        let send = super::frames::Send {
            job: JobId(1),
            slot: 0,
            consumer,
            payload,
        };
        let cut = tokio::time::timeout(Duration::from_secs(20), async {
            // 8 MiB, beyond the 4 MiB pool (and margin) any window could come from.
            for _ in 0..140 {
                let mut frame = BytesMut::new();
                let mut chunks = Vec::new();
                super::frames::encode_send_chunks(&send, &mut frame, &mut chunks);
                chunks.insert(0, frame.freeze());
                for chunk in chunks {
                    if raw.write_all(&chunk).await.is_err() {
                        return true;
                    }
                }
            }
            let mut sink = vec![0u8; 4096];
            loop {
                match raw.read(&mut sink).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert_eq!(
            cut,
            Ok(true),
            "the process flooding beyond its credit was not cut off"
        );
        std::fs::remove_file(&path).ok();
    }
}
