//! Hosting nodes in this process: starting a bench node, opening every endpoint it runs
//! and running each as a task that reports how it ended. Used by the in-process mode (all
//! nodes here) and by a node process of `--spawn` (one node here).
//!
//! Invariants: on each node every consumer is opened before any producer, so no channel
//! waits parked for its consumer; every endpoint task sends exactly one
//! [`EndpointEvent::Finished`], as soon as its endpoint is done; an endpoint that failed keeps
//! its handle open for at most [`FAILED_LINGER`] (or until every endpoint of its job in
//! this process has finished), so that its own drop, which aborts or cancels its channels,
//! does not mask from the others the failure they are about to see.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use plexus::{Membership, Node};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::delivered::Delivered;
use super::roles::{self, ConsumerCtx, EndpointEvent, EndpointOutcome, Moved, Role};
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
    Node::builder()
        .config(shape.node_config(i))
        .listen(SocketAddr::new(IpAddr::V4(ip), 0))
        .membership(membership.clone())
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

/// Opens every endpoint `nodes` run in `shape` and runs each in a task of its own. Each
/// task sends its outcome on `events`; consumers announce there when they are done, wait
/// for `release` if they stall, and add what they receive to `delivered`; producers that
/// sent everything close once `close_gate` is open (keeping their job in progress until
/// then), or stop at their job's failure.
///
/// Every job asks every node for admission first, in job order, without waiting; then one
/// task per job and node waits for its turn (with a memory budget, jobs whose credit
/// pools do not fit yet wait there) and opens its endpoints. An endpoint that cannot open
/// reports the error as its outcome.
pub async fn launch(
    nodes: &[Node],
    shape: &Shape,
    events: &mpsc::UnboundedSender<EndpointEvent>,
    release: &watch::Receiver<bool>,
    close_gate: &watch::Receiver<bool>,
    delivered: &Arc<Delivered>,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let (m_p, m_c) = (shape.producers(), shape.consumers());
    let factory = Arc::new(MessageFactory::new(BODY_SEED));
    let mut openers = Vec::new();
    for j in 0..shape.jobs() {
        let linger = JobLinger {
            finished: Arc::new(watch::channel(0).0),
            total: nodes.iter().filter(|n| shape.job_uses(j, n.id().0)).count()
                * (m_p + m_c) as usize,
        };
        for node in nodes.iter().filter(|n| shape.job_uses(j, n.id().0)) {
            let job = node.job(Shape::job_id(j), shape.topology(j));
            // Same order on every node: job 1, job 2, ... (see `Job::try_admit`).
            let _ = job.try_admit();
            openers.push(JobOnNode {
                job,
                node: node.clone(),
                shape: shape.clone(),
                j,
                linger: linger.clone(),
                events: events.clone(),
                release: release.clone(),
                close_gate: close_gate.clone(),
                delivered: delivered.clone(),
                factory: factory.clone(),
            });
        }
    }
    for opener in openers {
        tasks.spawn(opener.run());
    }
    tasks
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
                        self.j,
                        ctx,
                        self.linger.clone(),
                        self.events.clone(),
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
                        self.j,
                        self.factory.clone(),
                        self.close_gate.clone(),
                        self.linger.clone(),
                        self.events.clone(),
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

    fn report_unopened(
        &self,
        endpoint: plexus::Endpoint,
        role: Role,
        stalled: bool,
        error: roles::EndpointError,
    ) {
        let outcome = outcome(
            self.j,
            endpoint,
            role,
            stalled,
            Moved::default(),
            0,
            Some(error),
        );
        let _ = self.events.send(EndpointEvent::Finished(outcome));
    }
}

async fn producer_task(
    mut tx: plexus::Producer,
    shape: Shape,
    job: u32,
    factory: Arc<MessageFactory>,
    close_gate: watch::Receiver<bool>,
    linger: JobLinger,
    events: mpsc::UnboundedSender<EndpointEvent>,
) {
    let me = tx.endpoint();
    let produced = match roles::produce(&mut tx, &shape, job, &factory).await {
        Ok(moved) => roles::hold_close(&mut tx, job, close_gate)
            .await
            .map(|()| moved)
            .map_err(|e| (moved, e)),
        Err(failed) => Err(failed),
    };
    let (moved, error, held) = match produced {
        Ok(moved) => match tx.close().await {
            Ok(()) => (moved, None, None),
            Err(e) => {
                let context = format!("job {} producer {me}: closing", Shape::job_id(job).0);
                (moved, Some(roles::EndpointError::plexus(context, &e)), None)
            }
        },
        Err((moved, error)) => (moved, Some(error), Some(tx)),
    };
    let failed = error.is_some();
    let _ = events.send(EndpointEvent::Finished(outcome(
        job,
        me,
        Role::Producer,
        false,
        moved,
        0,
        error,
    )));
    linger.finish(failed).await;
    drop(held);
}

async fn consumer_task(
    mut rx: plexus::Consumer,
    node: Node,
    shape: Shape,
    job: u32,
    mut ctx: ConsumerCtx,
    linger: JobLinger,
    events: mpsc::UnboundedSender<EndpointEvent>,
) {
    let me = rx.endpoint();
    let (moved, error) = roles::consume(&mut rx, &shape, job, &mut ctx).await;
    let peak = node
        .consumer_credit(Shape::job_id(job), me.slot)
        .map_or(0, |c| c.peak);
    let failed = error.is_some();
    let _ = events.send(EndpointEvent::Finished(outcome(
        job,
        me,
        Role::Consumer,
        ctx.stalled,
        moved,
        peak,
        error,
    )));
    linger.finish(failed).await;
    drop(rx);
}

fn outcome(
    job: u32,
    me: plexus::Endpoint,
    role: Role,
    stalled: bool,
    moved: Moved,
    peak_buffered: u64,
    error: Option<roles::EndpointError>,
) -> EndpointOutcome {
    EndpointOutcome {
        job,
        node: me.node.0,
        role,
        slot: me.slot,
        stalled,
        bytes: moved.bytes,
        messages: moved.messages,
        peak_buffered,
        error,
    }
}
