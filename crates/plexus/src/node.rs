//! A running node: its listener, timer and links, and the entry point to jobs.
//!
//! Invariant: a node holds at most one link per peer; links are dialled lazily when a
//! channel first needs the peer (see the protocol core for the tie-break of simultaneous
//! dials). [`Node::shutdown`] stops it cleanly, telling its peers; dropping the last
//! [`Node`] handle does the same without waiting for it. Job and endpoint handles do not
//! keep a node running: once it stops, they report [`crate::ExchangeError::NodeShutdown`].

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use plexus_proto::node::{ConsumerCredit, Stats};
use plexus_proto::{Config, JobId, NodeCore, NodeId};

use crate::error::Error;
use crate::job::Job;
use crate::membership::Membership;
use crate::shared::Shared;
use crate::topology::Topology;

/// What a node's links run over; the same on every member of a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// One TCP connection per node pair (with TLS if the node has an identity).
    #[default]
    Tcp,
    /// One QUIC connection per node pair, over UDP; needs a TLS identity.
    Quic,
}

/// Builds and starts a [`Node`].
#[derive(Debug, Default)]
pub struct NodeBuilder {
    config: Option<Config>,
    listen: Option<SocketAddr>,
    membership: Option<Membership>,
    tls: Option<crate::tls::TlsIdentity>,
    transport: Transport,
}

impl NodeBuilder {
    /// The protocol configuration (node id, cluster id, limits). Required.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The address to listen on; outgoing connections are bound to its IP. Required.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// The cluster's directory of addresses; the node publishes its own address in it.
    /// Defaults to a fresh, empty directory.
    pub fn membership(mut self, membership: Membership) -> Self {
        self.membership = Some(membership);
        self
    }

    /// Encrypts every link with mutual TLS 1.3 under this identity: the node's certificate
    /// (naming it `node-<id>.plexus`) and key, and the cluster's authority. Every member
    /// must use TLS then. Optional.
    pub fn tls(mut self, identity: crate::tls::TlsIdentity) -> Self {
        self.tls = Some(identity);
        self
    }

    /// What links run over: TCP (the default) or QUIC, which needs [`NodeBuilder::tls`]
    /// (QUIC links are always TLS 1.3, with the node's identity).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Binds the listener and starts the node's tasks on the current tokio runtime.
    pub async fn start(self) -> Result<Node, Error> {
        let config = self.config.ok_or(Error::Missing("config"))?;
        let listen = self.listen.ok_or(Error::Missing("listen address"))?;
        let membership = self.membership.unwrap_or_default();
        let mut config = config;
        config.incarnation = fresh_incarnation();
        let node = config.node;
        let core = NodeCore::new(config, Instant::now())?;
        let runtime = tokio::runtime::Handle::current();
        let address_error = |source| Error::Io {
            node: node.0,
            what: "reading the listener address",
            source,
        };
        let (shared, local_addr) = match self.transport {
            Transport::Tcp => {
                let tls = self.tls.as_ref().map(crate::tls::Tls::new).transpose()?;
                let listener = crate::driver::listen(listen).map_err(|source| Error::Io {
                    node: node.0,
                    what: "binding the listener",
                    source,
                })?;
                let local_addr = listener.local_addr().map_err(address_error)?;
                membership.insert(node, local_addr);
                let shared = Shared::new(core, membership, local_addr.ip(), runtime, tls, None);
                let accept = tokio::spawn(crate::driver::accept_loop(shared.clone(), listener));
                shared.track(accept.abort_handle());
                (shared, local_addr)
            }
            Transport::Quic => {
                let identity = self
                    .tls
                    .as_ref()
                    .ok_or(Error::Missing("a TLS identity (QUIC links are TLS 1.3)"))?;
                let quic = crate::quic::Quic::bind(listen, identity)?;
                let local_addr = quic.local_addr().map_err(address_error)?;
                membership.insert(node, local_addr);
                let shared = Shared::new(
                    core,
                    membership,
                    local_addr.ip(),
                    runtime,
                    None,
                    Some(quic.clone()),
                );
                let accept = tokio::spawn(crate::driver::quic_accept_loop(shared.clone(), quic));
                shared.track(accept.abort_handle());
                (shared, local_addr)
            }
        };
        let timer = tokio::spawn(crate::driver::timer_loop(shared.clone()));
        shared.track(timer.abort_handle());
        Ok(Node {
            _owner: Arc::new(Owner {
                shared: shared.clone(),
            }),
            shared,
            local_addr,
        })
    }
}

/// How long a shutdown waits for links to send their last frames.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// Stops the node when the last [`Node`] handle goes.
#[derive(Debug)]
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        if shared.lock().stopped {
            return;
        }
        shared.op(|st| st.core.begin_shutdown());
        // Give the links a moment to send their GoAway, then stop everything.
        self.shared.runtime.spawn(async move {
            linger_until_links_closed(&shared).await;
            stop_tasks(&shared);
        });
    }
}

/// Waits (at most [`SHUTDOWN_LINGER`]) until every link's writer has finished.
async fn linger_until_links_closed(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_LINGER;
    while !shared.lock().link_writers.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Stops every task of the node, and any it starts later.
fn stop_tasks(shared: &Shared) {
    let tasks = {
        let mut st = shared.lock();
        st.stopped = true;
        std::mem::take(&mut st.tasks)
    };
    for task in tasks {
        task.abort();
    }
    if let Some(quic) = &shared.quic {
        quic.close();
    }
}

/// A handle to a running node. Cheap to clone; the node stops when the last clone goes.
#[derive(Clone, Debug)]
pub struct Node {
    shared: Arc<Shared>,
    /// Held for its `Drop`: the last handle to go stops the node.
    _owner: Arc<Owner>,
    local_addr: SocketAddr,
}

impl Node {
    /// A builder for a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.node
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Attaches this process to its machine's agent, listening on `socket`: jobs opened
    /// from the returned handle run on the agent's node, with the same `Job`, `Producer`
    /// and `Consumer` API as an embedded node.
    pub async fn attach(socket: impl AsRef<std::path::Path>) -> Result<crate::AttachedNode, Error> {
        crate::AttachedNode::connect(socket.as_ref()).await
    }

    /// Lets processes of this machine attach to this node (see [`Node::attach`]) through
    /// a Unix socket at `socket`, created with owner-only permissions (or group ones, if
    /// `policy` names a group); only processes of the users or group in `policy` are
    /// accepted. Serves them until the node stops.
    pub fn serve_local(
        &self,
        socket: impl AsRef<std::path::Path>,
        policy: crate::AttachPolicy,
    ) -> Result<(), Error> {
        let listener =
            crate::local::agent::bind(socket.as_ref(), &policy).map_err(|source| Error::Io {
                node: self.shared.node.0,
                what: "binding the local socket",
                source,
            })?;
        let task = self.shared.runtime.spawn(crate::local::agent::accept_loop(
            self.shared.clone(),
            listener,
            policy,
        ));
        self.shared.track(task.abort_handle());
        Ok(())
    }

    /// A handle to job `id` with the given topology. Endpoints are opened from it.
    pub fn job(&self, id: JobId, topology: Topology) -> Job {
        let port = crate::embedded::EmbeddedJob::new(self.shared.clone(), id, topology.clone());
        Job::new(Box::new(port), id, topology)
    }

    /// What the node's core holds right now.
    pub fn stats(&self) -> Stats {
        self.shared.lock().core.stats()
    }

    /// Credit figures of a consumer open on this node.
    pub fn consumer_credit(&self, job: JobId, slot: u32) -> Option<ConsumerCredit> {
        self.shared.lock().core.consumer_credit(job, slot)
    }

    /// The most bytes this node ever had buffered (data queued to send or kept until
    /// acknowledged, plus credit its consumers granted and had not got back).
    pub fn peak_buffered(&self) -> u64 {
        self.shared.lock().core.peak_buffered()
    }

    /// What the node did since it started and holds now.
    pub fn metrics(&self) -> crate::Metrics {
        self.shared.metrics()
    }

    /// The channels whose producers here wait for credit now, longest wait first.
    pub fn starving(&self) -> Vec<crate::Starving> {
        self.shared.lock().core.starving(Instant::now())
    }

    /// The node's status: links, jobs, buffers, and the consumers that keep producers
    /// here waiting.
    pub fn status(&self) -> crate::Status {
        self.shared.status()
    }

    /// The longest time a job waited for admission on this node.
    pub fn longest_admission_wait(&self) -> Duration {
        self.shared.lock().core.longest_admission_wait()
    }

    /// How long each link that resumed after a loss was down (the most recent ones).
    pub fn resume_times(&self) -> Vec<Duration> {
        self.shared.lock().core.resume_times()
    }

    /// Shuts the node down cleanly: every link sends `GoAway(Shutdown)`, so peers fail
    /// the jobs that span this node at once, with that cause; the jobs live here fail
    /// with [`crate::ExchangeError::NodeShutdown`]; then, once the links have closed (or
    /// after a second at most), the node's tasks stop and its sockets close.
    pub async fn shutdown(&self) {
        self.shared.op(|st| st.core.begin_shutdown());
        linger_until_links_closed(&self.shared).await;
        stop_tasks(&self.shared);
    }

    /// Stops the node at once, without telling its peers (they notice as for a crash).
    pub fn abort(&self) {
        self.shared.op(|st| st.core.begin_shutdown());
        stop_tasks(&self.shared);
    }
}

/// A random, non-zero incarnation for a node starting now: peers compare it to tell a
/// restarted node (which lost its state) from one that reconnected.
fn fresh_incarnation() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::NodeId;

    /// A dial or a link that completes while the node shuts down starts its tasks after
    /// the node stopped them all: they are stopped as they are tracked, so nothing of the
    /// node keeps answering its peers.
    #[tokio::test]
    async fn a_task_tracked_after_shutdown_is_stopped() {
        let node = Node::builder()
            .config(Config::new(
                NodeId(0),
                7,
                crate::generate_secret().expect("random"),
            ))
            .listen(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 35, 1)), 0))
            .membership(Membership::new())
            .start()
            .await
            .expect("node starts");
        let before = tokio::spawn(std::future::pending::<()>());
        node.shared.track(before.abort_handle());
        node.shutdown().await;
        let after = tokio::spawn(std::future::pending::<()>());
        node.shared.track(after.abort_handle());
        for task in [before, after] {
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
            assert!(
                matches!(outcome, Ok(Err(ref e)) if e.is_cancelled()),
                "{outcome:?}"
            );
        }
    }
}
