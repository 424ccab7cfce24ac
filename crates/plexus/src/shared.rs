//! The state one node's tasks and handles share: the protocol core behind a mutex, and the
//! wakers and notifiers through which the core's events reach tasks.
//!
//! Invariants: every call into the core goes through [`Shared::op`], which drains the core's
//! events before releasing the lock and acts on them after releasing it, so no event is
//! lost and no waker runs under the lock. A producer's readiness is a list of consumers
//! kept until the producer takes it, so a readiness that happens between a failed
//! `try_send` and the wait is never missed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use plexus_proto::frame::GoAwayCode;
use plexus_proto::node::{Event, LinkCause};
use plexus_proto::{Endpoint, JobId, LinkId, NodeCore, NodeId};
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::membership::Membership;

/// Readiness of one producer.
#[derive(Debug, Default)]
pub(crate) struct ProducerWake {
    /// Consumers whose channels became able to make progress, not yet taken by the producer.
    pub ready: Vec<Endpoint>,
    pub waker: Option<Waker>,
}

/// How the runtime reaches a link's writer task.
#[derive(Debug, Clone)]
pub(crate) struct LinkWriter {
    /// The other end of the connection.
    pub remote: Option<std::net::SocketAddr>,
    /// Wakes it when the core has bytes for the link.
    pub wake: Arc<Notify>,
    /// Set when the core closes the link: a writer blocked in a socket write (its peer
    /// stopped reading) gives up after a short grace instead of waiting forever.
    pub closing: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub core: NodeCore,
    /// Readiness of each open producer, from its opening to its drop.
    pub producers: HashMap<(JobId, u32), ProducerWake>,
    pub consumers: HashMap<(JobId, u32), Waker>,
    /// Tasks waiting for a job's admission, woken (all of them) when it is decided; each
    /// then reads the outcome from the core, which keeps it while the job lives.
    pub admissions: HashMap<JobId, Vec<Waker>>,
    /// The writer task of each link: how to wake it, and how to tell it the link closes.
    pub link_writers: HashMap<LinkId, LinkWriter>,
    /// Accepted connections that have not proved membership yet, with their source.
    pub unproved: HashMap<LinkId, std::net::IpAddr>,
    /// Lines about refused connections, rate-limited.
    pub refusals_log: crate::driver::LogLimit,
    /// Wakes the timer task when the core set an earlier deadline.
    pub timer: Arc<Notify>,
    pub tasks: Vec<AbortHandle>,
    /// Length of `tasks` after finished tasks were last dropped from it.
    pub tasks_kept: usize,
    /// The node was shut down: a task started since (a dial or a link that completed
    /// meanwhile) is stopped as soon as it is tracked.
    pub stopped: bool,
}

/// One node's shared runtime state.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    pub membership: Membership,
    /// How links are encrypted and certified, if they are.
    pub tls: Option<crate::tls::Tls>,
    /// The QUIC endpoint links go over, if the node's transport is QUIC (then `tls` is
    /// not used: QUIC runs its own TLS 1.3 with the same identity).
    pub quic: Option<crate::quic::Quic>,
    /// Processes attached through the local socket now.
    pub attached: std::sync::atomic::AtomicUsize,
    /// The address outgoing connections are bound to, so the OS attributes them to us.
    pub local_ip: IpAddr,
    pub node: NodeId,
    /// The runtime the node was started on: its tasks are spawned there, so calls from
    /// threads outside the runtime (a `try_send` that needs a dial, a drop) work too.
    pub runtime: tokio::runtime::Handle,
}

impl Shared {
    pub fn new(
        core: NodeCore,
        membership: Membership,
        local_ip: IpAddr,
        runtime: tokio::runtime::Handle,
        tls: Option<crate::tls::Tls>,
        quic: Option<crate::quic::Quic>,
    ) -> Arc<Self> {
        let node = core.node();
        Arc::new(Self {
            state: Mutex::new(State {
                core,
                producers: HashMap::new(),
                consumers: HashMap::new(),
                admissions: HashMap::new(),
                link_writers: HashMap::new(),
                unproved: HashMap::new(),
                refusals_log: crate::driver::LogLimit::default(),
                timer: Arc::new(Notify::new()),
                tasks: Vec::new(),
                tasks_kept: 0,
                stopped: false,
            }),
            membership,
            local_ip,
            node,
            runtime,
            tls,
            quic,
            attached: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// What the node did since it started and holds now.
    pub fn metrics(&self) -> crate::Metrics {
        let attached_processes = self.attached.load(std::sync::atomic::Ordering::Relaxed);
        let st = self.lock();
        crate::Metrics {
            node: self.node,
            counters: st.core.counters().clone(),
            stats: st.core.stats(),
            links: st.core.peer_links(),
            buffered_bytes: st.core.buffered(),
            memory_budget: st.core.config().memory_budget,
            admission_waiting: st.core.admission_load().0,
            attached_processes,
        }
    }

    /// The node's status (see [`crate::Status`]).
    pub fn status(&self) -> crate::Status {
        let (starving, jobs) = {
            let st = self.lock();
            (
                st.core.starving(std::time::Instant::now()),
                st.core.job_summaries(crate::status::JOBS_SHOWN),
            )
        };
        crate::Status::of(&self.metrics(), &starving, &jobs)
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then delivers the core's events.
    pub fn op<R>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> R) -> R {
        // Inline storage: most operations wake a task or two, and allocate nothing here.
        let mut wakers: SmallVec<[Waker; 4]> = SmallVec::new();
        let mut notifies: SmallVec<[Arc<Notify>; 4]> = SmallVec::new();
        let mut dials: SmallVec<[NodeId; 2]> = SmallVec::new();
        let result = {
            let mut st = self.lock();
            let result = f(&mut st);
            if st.core.take_timer_changed() {
                notifies.push(st.timer.clone());
            }
            while let Some(event) = st.core.poll_event() {
                match event {
                    Event::Dial { peer } => dials.push(peer),
                    Event::Transmit { link } => {
                        if let Some(w) = st.link_writers.get(&link) {
                            notifies.push(w.wake.clone());
                        }
                    }
                    Event::Close { link, cause } => {
                        if let LinkCause::Unauthenticated(reason) = &cause {
                            let remote = st.link_writers.get(&link).and_then(|w| w.remote);
                            let node = self.node.0;
                            st.refusals_log.log(|| {
                                tracing::warn!(
                                    node,
                                    link = link.0,
                                    remote = ?remote,
                                    %reason,
                                    "refused a connection that did not prove membership"
                                )
                            });
                        } else {
                            tracing::info!(node = self.node.0, link = link.0, %cause, "closing link");
                        }
                        if let Some(w) = st.link_writers.get(&link) {
                            w.closing.send_replace(true);
                            notifies.push(w.wake.clone());
                        }
                    }
                    Event::ProducerReady {
                        job,
                        slot,
                        consumer,
                    } => {
                        // Only for a producer still open: its entry lives from its
                        // opening to its drop (a late event must not recreate it).
                        if let Some(w) = st.producers.get_mut(&(job, slot)) {
                            w.ready.push(consumer);
                            if let Some(waker) = w.waker.take() {
                                wakers.push(waker);
                            }
                        }
                    }
                    Event::Admitted { job } => {
                        tracing::info!(node = self.node.0, job = job.0, "job admitted");
                        if let Some(waiting) = st.admissions.remove(&job) {
                            wakers.extend(waiting);
                        }
                    }
                    Event::AdmissionFailed { job, error } => {
                        tracing::warn!(node = self.node.0, job = job.0, %error, "job not admitted");
                        if let Some(waiting) = st.admissions.remove(&job) {
                            wakers.extend(waiting);
                        }
                    }
                    Event::PeerDead {
                        peer,
                        cause,
                        jobs_failed,
                    } => {
                        let orderly = jobs_failed.is_empty()
                            && cause == LinkCause::GoAway(GoAwayCode::Shutdown);
                        if orderly {
                            // A peer that shut down cleanly with no job here spanning it.
                            tracing::info!(node = self.node.0, peer = peer.0, "peer shut down");
                        } else {
                            tracing::warn!(
                                node = self.node.0,
                                peer = peer.0,
                                %cause,
                                jobs_failed = ?jobs_failed,
                                "peer declared dead"
                            );
                        }
                    }
                    Event::LinkUp {
                        peer,
                        link,
                        resumed_after,
                    } => match resumed_after {
                        Some(down) => tracing::info!(
                            node = self.node.0,
                            peer = peer.0,
                            link = link.0,
                            down_ms = down.as_millis() as u64,
                            "link resumed"
                        ),
                        None => tracing::info!(
                            node = self.node.0,
                            peer = peer.0,
                            link = link.0,
                            "link up"
                        ),
                    },
                    Event::JobEnded { job, failure } => match failure {
                        None => tracing::info!(node = self.node.0, job = job.0, "job done"),
                        Some(error) => tracing::warn!(
                            node = self.node.0,
                            job = job.0,
                            %error,
                            "job failed"
                        ),
                    },
                    Event::ConsumerReady { job, slot } => {
                        if let Some(waker) = st.consumers.remove(&(job, slot)) {
                            wakers.push(waker);
                        }
                    }
                }
            }
            result
        };
        for waker in wakers {
            waker.wake();
        }
        for notify in notifies {
            notify.notify_one();
        }
        for peer in dials {
            crate::driver::spawn_dial(self.clone(), peer);
        }
        result
    }

    /// Remembers a task so that shutting the node down stops it, or stops it at once if
    /// the node was shut down already (a dial or link completing meanwhile must not outlive
    /// the node). Finished tasks are dropped from the list once it has doubled since the
    /// last time, so a node with thousands of links does not scan them all for every new
    /// task.
    pub fn track(&self, handle: AbortHandle) {
        let mut st = self.lock();
        if st.stopped {
            drop(st);
            handle.abort();
            return;
        }
        if st.tasks.len() >= (2 * st.tasks_kept).max(64) {
            st.tasks.retain(|t| !t.is_finished());
            st.tasks_kept = st.tasks.len();
        }
        st.tasks.push(handle);
    }
}
