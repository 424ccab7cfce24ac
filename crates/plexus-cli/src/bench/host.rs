//! Hosting nodes in this process: starting a bench node, opening every endpoint it runs in
//! a wave, in the run's arrival order, and running each as a task that reports how it
//! ended and when it opened. Used by the in-process mode (all nodes here) and by a node
//! process of `--spawn` (one node, or a group, here).
//!
//! Invariants: each node asks for admission of a wave's jobs in the order
//! [`Arrival::schedule`] gives it; on each node every consumer is opened before any
//! producer, so no channel waits parked for its consumer; every endpoint task sends exactly
//! one [`EndpointEvent::Finished`], as soon as its endpoint is done; an endpoint that failed
//! keeps its handle open for at most [`FAILED_LINGER`] (or until every endpoint of its job
//! in this process has finished), so that its own drop, which aborts or cancels its
//! channels, does not mask from the others the failure they are about to see.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use plexus::{Membership, Node};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::arrival::{Arrival, ArrivalOrder};
use super::delivered::Delivered;
use super::roles::{self, wall_us, ConsumerCtx, EndpointEvent, EndpointOutcome, Moved, Role};
use super::shape::Shape;
use super::workload::MessageFactory;

/// Longest time a failed endpoint keeps its handle open.
pub const FAILED_LINGER: Duration = Duration::from_secs(1);

/// Seed of every message body; consumers verify by CRC, so processes need not share it,
/// but they do.
pub const BODY_SEED: u64 = 0x5eed;

/// Starts node `i` of `shape` on its own address (port 0), publishing it in `membership`.
pub async fn start_node(shape: &Shape, i: u32, membership: &Membership) -> Result<Node, String> {
    let ip = shape.node_ip(i);
    let mut builder = Node::builder()
        .config(shape.node_config(i))
        .listen(SocketAddr::new(IpAddr::V4(ip), 0))
        .membership(membership.clone())
        .transport(shape.transport());
    if let Some(identity) = shape.node_tls(i)? {
        builder = builder.tls(identity);
    }
    builder
        .start()
        .await
        .map_err(|e| format!("starting node {i} on {ip}: {e}"))
}

/// How long each link of `node` was down before traffic resumed, one entry per resume.
pub fn resume_times(node: &Node) -> Vec<Duration> {
    node.resume_times()
}

/// Counts the finished endpoints of one job in this process, for [`FAILED_LINGER`].
#[derive(Clone)]
struct JobLinger {
    finished: Arc<watch::Sender<usize>>,
    total: usize,
}

impl JobLinger {
    /// Counts one endpoint as finished; if it failed, waits until every endpoint of the
    /// job here finished, or [`FAILED_LINGER`] passed.
    async fn finish(&self, failed: bool) {
        self.finished.send_modify(|n| *n += 1);
        if failed {
            let mut rx = self.finished.subscribe();
            let total = self.total;
            let _ = tokio::time::timeout(FAILED_LINGER, rx.wait_for(|n| *n >= total)).await;
        }
    }
}

/// What every wave's endpoints share: the shape, the arrival order, and where they report.
pub struct Launcher {
    shape: Shape,
    arrival: Arrival,
    release: watch::Receiver<bool>,
    close_gate: watch::Receiver<bool>,
    delivered: Arc<Delivered>,
    factory: Arc<MessageFactory>,
}

impl Launcher {
    /// Consumers wait for `release` if they stall and add what they receive to
    /// `delivered`; producers that sent everything close once `close_gate` is open
    /// (keeping their job in progress until then), or stop at their job's failure.
    pub fn new(
        shape: &Shape,
        arrival: Arrival,
        release: &watch::Receiver<bool>,
        close_gate: &watch::Receiver<bool>,
        delivered: &Arc<Delivered>,
    ) -> Launcher {
        Launcher {
            shape: shape.clone(),
            arrival,
            release: release.clone(),
            close_gate: close_gate.clone(),
            delivered: delivered.clone(),
            factory: Arc::new(MessageFactory::new(BODY_SEED)),
        }
    }

    /// Opens every endpoint `nodes` run in wave `wave` and runs each in a task of its own,
    /// which sends its outcome on `events`; consumers announce there when they are done.
    ///
    /// Each node asks for admission of its jobs in the arrival order: with `same`, every
    /// job asks every node first, in job order, without waiting, then one task per job and
    /// node waits for its turn (with a memory budget, jobs whose credit pools do not fit
    /// yet wait there) and opens its endpoints; with `per-node-random`, one task per node
    /// asks for its jobs in its own order, pausing between them, and starts each job's
    /// opener as it goes. An endpoint that cannot open reports the error as its outcome.
    pub fn launch(
        &self,
        nodes: &[Node],
        wave: u32,
        events: &mpsc::UnboundedSender<EndpointEvent>,
    ) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        let per_node = (self.shape.producers() + self.shape.consumers()) as usize;
        let lingers: HashMap<u32, JobLinger> = self
            .shape
            .wave_jobs(wave)
            .map(|j| {
                let here = nodes.iter().filter(|n| self.shape.job_uses(j, n.id().0));
                let linger = JobLinger {
                    finished: Arc::new(watch::channel(0).0),
                    total: here.count() * per_node,
                };
                (j, linger)
            })
            .collect();
        let opener = |node: &Node, j: u32, linger: &JobLinger| JobOnNode {
            job: node.job(Shape::job_id(j), self.shape.topology(j)),
            node: node.clone(),
            shape: self.shape.clone(),
            j,
            linger: linger.clone(),
            events: events.clone(),
            release: self.release.clone(),
            close_gate: self.close_gate.clone(),
            delivered: self.delivered.clone(),
            factory: self.factory.clone(),
        };
        match self.arrival.order {
            ArrivalOrder::Same => {
                let mut openers = Vec::new();
                for j in self.shape.wave_jobs(wave) {
                    let Some(linger) = lingers.get(&j) else {
                        continue;
                    };
                    for node in nodes.iter().filter(|n| self.shape.job_uses(j, n.id().0)) {
                        let opener = opener(node, j, linger);
                        // Same order on every node: job 1, job 2, ... (see `Job::try_admit`).
                        let _ = opener.job.try_admit();
                        openers.push(opener);
                    }
                }
                for opener in openers {
                    tasks.spawn(opener.run());
                }
            }
            ArrivalOrder::PerNodeRandom => {
                for node in nodes {
                    let mine = self
                        .shape
                        .wave_jobs(wave)
                        .filter(|&j| self.shape.job_uses(j, node.id().0))
                        .collect();
                    let schedule = self
                        .arrival
                        .schedule(node.id().0, wave, mine)
                        .into_iter()
                        .filter_map(|(j, pause)| Some((opener(node, j, lingers.get(&j)?), pause)))
                        .collect();
                    tasks.spawn(arrive(schedule));
                }
            }
        }
        tasks
    }
}

/// Asks for admission of each job of one node in turn, starting its opener and pausing
/// after it as `schedule` says; then waits for every opener.
async fn arrive(schedule: Vec<(JobOnNode, Duration)>) {
    let mut openers = JoinSet::new();
    for (opener, pause) in schedule {
        let _ = opener.job.try_admit();
        openers.spawn(opener.run());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    while openers.join_next().await.is_some() {}
}

/// The endpoints of one job on one node, to open and run.
struct JobOnNode {
    job: plexus::Job,
    node: Node,
    shape: Shape,
    j: u32,
    linger: JobLinger,
    events: mpsc::UnboundedSender<EndpointEvent>,
    release: watch::Receiver<bool>,
    close_gate: watch::Receiver<bool>,
    delivered: Arc<Delivered>,
    factory: Arc<MessageFactory>,
}

impl JobOnNode {
    /// Waits for admission, opens the consumers then the producers, and runs them all.
    async fn run(self) {
        let mut endpoints = JoinSet::new();
        let me = self.node.id();
        let context = |role: &str, slot: u32| {
            format!(
                "opening {role} {slot} of job {} on node {}",
                Shape::job_id(self.j).0,
                me.0
            )
        };
        for slot in 0..self.shape.consumers() {
            let endpoint = plexus::Endpoint::new(me, slot);
            let stalled = self.shape.is_stalled(self.j, endpoint);
            match self.job.consumer(slot).await {
                Ok(rx) => {
                    let ctx = ConsumerCtx::new(
                        stalled,
                        self.release.clone(),
                        self.events.clone(),
                        self.delivered.clone(),
                    );
                    endpoints.spawn(consumer_task(
                        rx,
                        self.node.clone(),
                        self.shape.clone(),
                        ctx,
                        self.ending(),
                    ));
                }
                Err(e) => {
                    if !stalled {
                        let _ = self.events.send(EndpointEvent::HealthyDone);
                    }
                    let error = roles::EndpointError::plexus(context("consumer", slot), &e);
                    self.report_unopened(endpoint, Role::Consumer, stalled, error);
                }
            }
        }
        for slot in 0..self.shape.producers() {
            let endpoint = plexus::Endpoint::new(me, slot);
            match self.job.producer(slot).await {
                Ok(tx) => {
                    endpoints.spawn(producer_task(
                        tx,
                        self.shape.clone(),
                        self.factory.clone(),
                        self.close_gate.clone(),
                        self.ending(),
                    ));
                }
                Err(e) => {
                    let error = roles::EndpointError::plexus(context("producer", slot), &e);
                    self.report_unopened(endpoint, Role::Producer, false, error);
                }
            }
        }
        while endpoints.join_next().await.is_some() {}
    }

    /// How an endpoint opened just now will report its end.
    fn ending(&self) -> Ending {
        Ending {
            j: self.j,
            opened_us: wall_us(),
            linger: self.linger.clone(),
            events: self.events.clone(),
        }
    }

    fn report_unopened(
        &self,
        endpoint: plexus::Endpoint,
        role: Role,
        stalled: bool,
        error: roles::EndpointError,
    ) {
        let outcome = EndpointOutcome {
            error: Some(error),
            ..EndpointOutcome::ending_now(self.j, endpoint, role, stalled, None)
        };
        let _ = self.events.send(EndpointEvent::Finished(outcome));
    }
}

/// How an open endpoint of job `j` reports its end.
struct Ending {
    j: u32,
    /// When the endpoint opened (wall clock, µs).
    opened_us: u64,
    linger: JobLinger,
    events: mpsc::UnboundedSender<EndpointEvent>,
}

impl Ending {
    /// Sends the outcome of the endpoint `me`; if it failed, lingers (see [`JobLinger`]).
    async fn report(
        &self,
        me: plexus::Endpoint,
        role: Role,
        stalled: bool,
        moved: Moved,
        peak_buffered: u64,
        error: Option<roles::EndpointError>,
    ) {
        let failed = error.is_some();
        let outcome = EndpointOutcome {
            bytes: moved.bytes,
            messages: moved.messages,
            peak_buffered,
            error,
            ..EndpointOutcome::ending_now(self.j, me, role, stalled, Some(self.opened_us))
        };
        let _ = self.events.send(EndpointEvent::Finished(outcome));
        self.linger.finish(failed).await;
    }
}

async fn producer_task(
    tx: plexus::Producer,
    shape: Shape,
    factory: Arc<MessageFactory>,
    close_gate: watch::Receiver<bool>,
    ending: Ending,
) {
    let me = tx.endpoint();
    let (moved, error, held) =
        roles::run_producer(tx, &shape, ending.j, &factory, close_gate).await;
    ending
        .report(me, Role::Producer, false, moved, 0, error)
        .await;
    drop(held);
}

async fn consumer_task(
    mut rx: plexus::Consumer,
    node: Node,
    shape: Shape,
    mut ctx: ConsumerCtx,
    ending: Ending,
) {
    let me = rx.endpoint();
    let job = ending.j;
    let (moved, error) = roles::consume(&mut rx, &shape, job, &mut ctx).await;
    let peak = node
        .consumer_credit(Shape::job_id(job), me.slot)
        .map_or(0, |c| c.peak);
    ending
        .report(me, Role::Consumer, ctx.stalled, moved, peak, error)
        .await;
    drop(rx);
}
