//! The attach protocol: processes on a machine use the machine's node through its agent
//! (`plexus agent`), with the same `Job` / `Producer` / `Consumer` API as an embedded node.
//! A process connects to the agent's Unix socket; the agent answers with two
//! shared-memory rings (one per direction) that carry every frame from then on, while the
//! socket carries only wake-ups and the end of the connection (see `pipe`).
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
//! Modules: `frames` (the byte layout), `pipe` (the rings and the socket beside them),
//! `shm` (the ring itself: the crate's only unsafe code), `agent` (the agent's side),
//! `client` (a process's side).

pub(crate) mod agent;
pub(crate) mod client;
pub(crate) mod frames;
pub(crate) mod pipe;
// The crate's only unsafe code: mapping the rings and copying in and out of them.
#[allow(unsafe_code)]
mod shm;

pub use agent::AttachPolicy;
pub use client::AttachedNode;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use plexus_proto::{Endpoint, JobId, NodeId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::frames::{encode_control, encode_send_chunks, Send, ToAgent, VERSION};
    use super::pipe::{self, PipeReader, PipeWriter};
    use crate::{AttachPolicy, Config, Membership, Node};

    /// A node listening on `ip` and serving its local socket, and a raw process attached to
    /// it that introduced itself and asked for `open` of job 1 (with these producers and
    /// consumers).
    async fn raw_process(
        ip: &str,
        name: &str,
        producers: Vec<Endpoint>,
        consumers: Vec<Endpoint>,
        open: ToAgent,
    ) -> (Node, std::path::PathBuf, PipeReader, PipeWriter) {
        let node = Node::builder()
            .config(Config::new(
                NodeId(0),
                7,
                crate::generate_secret().expect("random"),
            ))
            .listen(format!("{ip}:0").parse().expect("address"))
            .membership(Membership::new())
            .start()
            .await
            .expect("node starts");
        let path = std::env::temp_dir().join(format!("plexus-{name}-{}.sock", std::process::id()));
        node.serve_local(&path, AttachPolicy::owner_only().expect("own uid"))
            .expect("serve");
        let stream = UnixStream::connect(&path).await.expect("connect");
        let (rd, mut wr) = pipe::accept(stream).await.expect("rings");
        let hello = ToAgent::Hello {
            version: VERSION,
            pid: 1,
        };
        let job = ToAgent::OpenJob {
            req: 1,
            job: JobId(1),
            producers,
            consumers,
        };
        let mut out = BytesMut::new();
        for frame in [hello, job, open] {
            encode_control(&frame, &mut out);
        }
        wr.write_all(&out).await.expect("write");
        (node, path, rd, wr)
    }

    /// Reads (and drops) what the agent sends until it closes the connection; whether it
    /// did within `bound`.
    async fn closed_within(raw: &mut PipeReader, bound: Duration) -> bool {
        let mut sink = vec![0u8; 4096];
        tokio::time::timeout(bound, async {
            while let Ok(n) = raw.read(&mut sink).await {
                if n == 0 {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// A process that floods its agent with requests it may not have outstanding is cut
    /// off: the agent closes its connection (and drops its endpoints) instead of queuing
    /// without bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_flooding_takes_is_cut_off() {
        let me = Endpoint::new(NodeId(0), 0);
        let open = ToAgent::OpenConsumer {
            req: 2,
            job: JobId(1),
            slot: 0,
        };
        let (_node, path, mut rd, mut wr) =
            raw_process("127.0.105.1", "flood", vec![me], vec![me], open).await;
        let mut out = BytesMut::new();
        for _ in 0..64 {
            let take = ToAgent::Take {
                job: JobId(1),
                slot: 0,
                consumed: 0,
                among: None,
            };
            encode_control(&take, &mut out);
        }
        wr.write_all(&out).await.expect("write");
        assert!(
            closed_within(&mut rd, Duration::from_secs(10)).await,
            "the flooding process was not cut off"
        );
        std::fs::remove_file(&path).ok();
    }

    /// A process that sends far beyond its producer's windows is cut off once what waits
    /// for the producer exceeds what its credit could ever allow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_sending_beyond_all_credit_is_cut_off() {
        let producer = Endpoint::new(NodeId(0), 0);
        // The consumer is on a node that never comes: no credit, no window.
        let consumer = Endpoint::new(NodeId(9), 0);
        let open = ToAgent::OpenProducer {
            req: 2,
            job: JobId(1),
            slot: 0,
        };
        let (_node, path, mut rd, mut wr) = raw_process(
            "127.0.107.1",
            "sendflood",
            vec![producer],
            vec![consumer],
            open,
        )
        .await;
        let send = Send {
            job: JobId(1),
            slot: 0,
            consumer,
            payload: bytes::Bytes::from(vec![0u8; 60_000]),
        };
        // 8 MiB, beyond the 4 MiB pool (and margin) any window could come from; a write
        // that fails means the agent closed the connection already.
        let mut cut = false;
        for _ in 0..140 {
            let mut frame = BytesMut::new();
            let mut chunks = Vec::new();
            encode_send_chunks(&send, &mut frame, &mut chunks);
            chunks.insert(0, frame.freeze());
            for chunk in chunks {
                cut |= wr.write_all(&chunk).await.is_err();
            }
            if cut {
                break;
            }
        }
        assert!(
            cut || closed_within(&mut rd, Duration::from_secs(20)).await,
            "the process flooding beyond its credit was not cut off"
        );
        std::fs::remove_file(&path).ok();
    }
}
