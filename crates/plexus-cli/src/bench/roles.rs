//! The workload's two roles, shared by the in-process and the one-process-per-node modes:
//! a producer sends its plan to every consumer of its job, a consumer reads and verifies
//! everything from every producer of its job, in the order the shape's consumption mode
//! says ([`super::consume`]). Also what each endpoint reports when it ends.
//!
//! Invariants: an endpoint stops at its first error and records it with the wall-clock
//! time it saw it and the node the error names, if any; a consumer passes only if its
//! verifier accepted every message and found every channel complete; a stalled consumer
//! reads nothing before the release; every non-stalled consumer announces exactly once
//! that it is done (even when it failed), so stalled consumers are always released.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use plexus::{Endpoint, ExchangeError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::consume::{self, Reading};
use super::delivered::Delivered;
use super::shape::Shape;
use super::workload::{MessageFactory, Plan};

/// Which role an endpoint plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sends to every consumer of its job.
    Producer,
    /// Receives from every producer of its job.
    Consumer,
}

/// Why an endpoint stopped early.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointError {
    /// What happened, naming the endpoint.
    pub message: String,
    /// Wall-clock time the endpoint saw the error, in ms since the UNIX epoch.
    pub at_ms: u64,
    /// The node the error names (the peer of a failed link, say), if it names one.
    pub names_node: Option<u32>,
    /// The endpoint the error names, as (node, slot), if it names one: the consumer of a
    /// cancelled channel, or the producer of an aborted one.
    #[serde(default)]
    pub names_endpoint: Option<(u32, u32)>,
    /// The process lost its connection to its agent (`--agent`): the error concerns the
    /// agent's node, which the process fills in as `names_node`.
    #[serde(default)]
    pub agent_lost: bool,
}

impl EndpointError {
    /// An error from the plexus library, seen now.
    pub fn plexus(context: String, error: &plexus::Error) -> EndpointError {
        EndpointError {
            message: format!("{context}: {error}"),
            at_ms: wall_ms(),
            names_node: named_node(error),
            names_endpoint: named_endpoint(error).map(|e| (e.node.0, e.slot)),
            agent_lost: matches!(error, plexus::Error::AgentLost(_)),
        }
    }

    /// Any other failure (verification, bench logic), seen now.
    pub fn other(message: String) -> EndpointError {
        EndpointError {
            message,
            at_ms: wall_ms(),
            names_node: None,
            names_endpoint: None,
            agent_lost: false,
        }
    }
}

/// One endpoint of a run: its job (index), role, node and slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Job index (the job's id is one more).
    pub job: u32,
    /// Producer or consumer.
    pub role: Role,
    /// Its node.
    pub node: u32,
    /// Its slot on the node.
    pub slot: u32,
}

impl EndpointKey {
    /// "producer 1/2 of job 1".
    pub fn describe(&self) -> String {
        let role = match self.role {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        };
        format!(
            "{role} {}/{} of job {}",
            self.node,
            self.slot,
            Shape::job_id(self.job).0
        )
    }

    /// The library's name of the endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(plexus::NodeId(self.node), self.slot)
    }
}

/// How one endpoint ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointOutcome {
    /// Job index (the job's id is one more).
    pub job: u32,
    /// Node the endpoint ran on.
    pub node: u32,
    /// Producer or consumer.
    pub role: Role,
    /// Slot on its node.
    pub slot: u32,
    /// A consumer that stalled until the release.
    pub stalled: bool,
    /// Payload bytes received (consumers) or queued for sending (producers).
    pub bytes: u64,
    /// Messages received (consumers) or queued for sending (producers).
    pub messages: u64,
    /// For a consumer, the peak of credit granted and not yet read.
    pub peak_buffered: u64,
    /// The first error, if the endpoint did not finish its work.
    pub error: Option<EndpointError>,
    /// Wall-clock time the endpoint was open, in µs since the UNIX epoch; `None` if it
    /// never opened (or its system does not tell).
    #[serde(default)]
    pub opened_us: Option<u64>,
    /// Wall-clock time the endpoint ended, in µs since the UNIX epoch.
    #[serde(default)]
    pub ended_us: u64,
}

impl EndpointOutcome {
    /// The outcome of endpoint `me` of job `j`, ending now, before what it moved and how
    /// it failed are filled in.
    pub fn ending_now(
        j: u32,
        me: Endpoint,
        role: Role,
        stalled: bool,
        opened_us: Option<u64>,
    ) -> EndpointOutcome {
        EndpointOutcome {
            job: j,
            node: me.node.0,
            role,
            slot: me.slot,
            stalled,
            bytes: 0,
            messages: 0,
            peak_buffered: 0,
            error: None,
            opened_us,
            ended_us: wall_us(),
        }
    }

    /// Which endpoint this is.
    pub fn key(&self) -> EndpointKey {
        EndpointKey {
            job: self.job,
            role: self.role,
            node: self.node,
            slot: self.slot,
        }
    }
}

/// Wall-clock time in ms since the UNIX epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wall-clock time in µs since the UNIX epoch (0 if the clock is before it): comparable
/// between the processes of one machine.
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The node a plexus error names: the peer of a failed link, the node of a cancelling
/// consumer or an aborting producer, or failing those the first `node N` in its text.
pub fn named_node(error: &plexus::Error) -> Option<u32> {
    match error.exchange() {
        Some(ExchangeError::LinkFailed { peer, .. }) => Some(peer.0),
        Some(ExchangeError::Cancelled { consumer, .. }) => Some(consumer.node.0),
        Some(ExchangeError::ProducerAborted { producer }) => Some(producer.node.0),
        _ => node_in_text(&error.to_string()),
    }
}

/// The endpoint a plexus error names: the consumer of a cancelled channel, or the
/// producer of an aborted one.
fn named_endpoint(error: &plexus::Error) -> Option<Endpoint> {
    match error.exchange() {
        Some(ExchangeError::Cancelled { consumer, .. }) => Some(*consumer),
        Some(ExchangeError::ProducerAborted { producer }) => Some(*producer),
        _ => None,
    }
}

/// The number after the first `node ` in `text` that is followed by digits.
fn node_in_text(text: &str) -> Option<u32> {
    text.match_indices("node ").find_map(|(at, word)| {
        let rest = &text[at + word.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}

/// What a role moved before it ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct Moved {
    /// Payload bytes.
    pub bytes: u64,
    /// Messages.
    pub messages: u64,
}

/// Messages up to this size are built before their credit is known, a run of up to
/// [`RUN`] per consumer at a time, and handed over with one library call per run (what is
/// refused is kept for the consumer's next turn); larger ones one at a time, each only
/// once its credit is there.
const BUILD_AHEAD_BELOW: usize = 4096;
/// Small messages built ahead and offered at once to one consumer.
const RUN: usize = 16;

/// Sends the producer's whole plan to every consumer of `job`, serving whichever consumers
/// have credit and waiting only when none has. Does not close the producer. On error
/// returns what was queued so far with the first error.
pub async fn produce(
    tx: &mut plexus::Producer,
    shape: &Shape,
    job: u32,
    factory: &MessageFactory,
) -> Result<Moved, (Moved, EndpointError)> {
    let me = tx.endpoint();
    let my_id = shape.producer_id(me);
    let plan: Plan = shape.plan();
    let consumers = shape.topology(job).consumers().to_vec();
    let messages = plan.messages();
    let mut moved = Moved::default();
    let fail = |moved: Moved, error: EndpointError| Err((moved, error));
    let context = || format!("job {} producer {me}", Shape::job_id(job).0);
    // Per consumer: the next message to queue, and the next to build.
    let mut next_seq = vec![0u32; consumers.len()];
    let mut next_built = vec![0u32; consumers.len()];
    let mut held: Vec<VecDeque<bytes::Bytes>> = vec![VecDeque::new(); consumers.len()];
    let index: HashMap<Endpoint, usize> =
        consumers.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    // Consumers worth trying now; the others wait for their credit.
    let mut runnable: Vec<usize> = (0..consumers.len()).collect();
    let mut next_round: Vec<usize> = Vec::with_capacity(consumers.len());
    let mut unfinished = consumers.len();
    while unfinished > 0 {
        if runnable.is_empty() {
            for consumer in tx.ready().await {
                let Some(&i) = index.get(&consumer) else {
                    continue;
                };
                if next_seq[i] < messages {
                    // `ready` may name a consumer twice.
                    if !runnable.contains(&i) {
                        runnable.push(i);
                    }
                } else if let Err(e) = tx.has_credit(consumer, 0) {
                    // A consumer that has its whole plan already: only its failure
                    // matters (credit for it goes unused).
                    return fail(moved, EndpointError::plexus(context(), &e));
                }
            }
            continue;
        }
        // One run (or one large message) to each runnable consumer per round, so they
        // progress evenly.
        for &i in &runnable {
            let consumer = consumers[i];
            let len = plan.message_len(next_seq[i]) as usize;
            let build = |seq| factory.message(&plan, my_id, shape.consumer_id(consumer), seq);
            if len > BUILD_AHEAD_BELOW && held[i].is_empty() {
                match tx.has_credit(consumer, len) {
                    Ok(true) => {
                        held[i].push_back(build(next_built[i]));
                        next_built[i] += 1;
                    }
                    Ok(false) => continue,
                    Err(e) => return fail(moved, EndpointError::plexus(context(), &e)),
                }
            }
            while len <= BUILD_AHEAD_BELOW && held[i].len() < RUN && next_built[i] < messages {
                held[i].push_back(build(next_built[i]));
                next_built[i] += 1;
            }
            let offered = held[i].len();
            let taken = match tx.try_send_many(consumer, &mut held[i]) {
                Ok(taken) => taken,
                Err(e) => return fail(moved, EndpointError::plexus(context(), &e)),
            };
            for seq in next_seq[i]..next_seq[i] + taken as u32 {
                moved.bytes += u64::from(plan.message_len(seq));
                moved.messages += 1;
            }
            next_seq[i] += taken as u32;
            if next_seq[i] == messages {
                unfinished -= 1;
            } else if taken == offered {
                next_round.push(i);
            }
            // Otherwise it waits for its credit: `ready` returns it.
        }
        std::mem::swap(&mut runnable, &mut next_round);
        next_round.clear();
        tokio::task::yield_now().await;
    }
    Ok(moved)
}

/// Keeps a producer that sent everything from closing until `gate` opens, so its job stays
/// in progress; returns its job's failure if that comes first.
pub async fn hold_close(
    tx: &mut plexus::Producer,
    job: u32,
    mut gate: watch::Receiver<bool>,
) -> Result<(), EndpointError> {
    let me = tx.endpoint();
    let context = || format!("job {} producer {me}", Shape::job_id(job).0);
    loop {
        if *gate.borrow_and_update() {
            return Ok(());
        }
        tokio::select! {
            changed = gate.changed() => {
                if changed.is_err() {
                    // The gate's owner is gone: nobody will hold us any longer.
                    return Ok(());
                }
            }
            // A failing job wakes its producers; the failure shows on their channels.
            ready = tx.ready() => {
                for consumer in ready {
                    if let Err(e) = tx.has_credit(consumer, 0) {
                        return Err(EndpointError::plexus(context(), &e));
                    }
                }
            }
        }
    }
}

/// A producer's whole run: sends its plan, holds its close until `close_gate` opens, and
/// closes. Returns what it queued and its first error; a producer that failed comes back
/// unclosed, to be dropped only once its failure is reported (dropping it aborts its
/// channels, which would show its consumers an error of its own first).
pub async fn run_producer(
    mut tx: plexus::Producer,
    shape: &Shape,
    job: u32,
    factory: &MessageFactory,
    close_gate: watch::Receiver<bool>,
) -> (Moved, Option<EndpointError>, Option<plexus::Producer>) {
    let me = tx.endpoint();
    let produced = match produce(&mut tx, shape, job, factory).await {
        Ok(moved) => hold_close(&mut tx, job, close_gate)
            .await
            .map(|()| moved)
            .map_err(|e| (moved, e)),
        Err(failed) => Err(failed),
    };
    match produced {
        Ok(moved) => match tx.close().await {
            Ok(()) => (moved, None, None),
            Err(e) => {
                let context = format!("job {} producer {me}: closing", Shape::job_id(job).0);
                (moved, Some(EndpointError::plexus(context, &e)), None)
            }
        },
        Err((moved, error)) => (moved, Some(error), Some(tx)),
    }
}

/// What the endpoints of a process report while they run.
#[derive(Debug)]
pub enum EndpointEvent {
    /// An endpoint ended.
    Finished(EndpointOutcome),
    /// A non-stalled consumer has all its data, or failed: it needs nothing more.
    HealthyDone,
}

/// How one consumer reads: whether it stalls, and what it tells the rest of the run.
pub struct ConsumerCtx {
    /// The consumer stalls until `release` turns true.
    pub stalled: bool,
    /// Turns true once every non-stalled consumer of the run is done.
    release: watch::Receiver<bool>,
    /// Where [`EndpointEvent::HealthyDone`] goes.
    events: mpsc::UnboundedSender<EndpointEvent>,
    /// Payload bytes received by the consumers of this process, for progress and the
    /// timeline.
    delivered: Arc<Delivered>,
    /// This consumer already announced it was done.
    announced: bool,
}

impl ConsumerCtx {
    /// A context for a consumer that stalls or not.
    pub fn new(
        stalled: bool,
        release: watch::Receiver<bool>,
        events: mpsc::UnboundedSender<EndpointEvent>,
        delivered: Arc<Delivered>,
    ) -> ConsumerCtx {
        ConsumerCtx {
            stalled,
            release,
            events,
            delivered,
            announced: false,
        }
    }

    /// Counts `bytes` this consumer received; once it has everything (`complete`), it is
    /// done.
    pub fn received(&mut self, bytes: u64, complete: bool) {
        self.delivered.add(self.stalled, bytes);
        if complete {
            // Every planned message is in: the consumer's work is done, though its stream
            // ends only when every producer has closed (after the stalled consumers
            // drained).
            self.mark_healthy_done();
        }
    }

    /// Announces this (non-stalled) consumer as done, once.
    fn mark_healthy_done(&mut self) {
        if self.stalled || self.announced {
            return;
        }
        self.announced = true;
        // The receiver outlives every consumer but the run's end; then nobody waits.
        let _ = self.events.send(EndpointEvent::HealthyDone);
    }
}

/// Reads and verifies everything for one consumer of `job` (after the release, if it
/// stalls), stopping at the first error.
pub async fn consume(
    rx: &mut plexus::Consumer,
    shape: &Shape,
    job: u32,
    ctx: &mut ConsumerCtx,
) -> (Moved, Option<EndpointError>) {
    let me = rx.endpoint();
    if ctx.stalled {
        let _ = ctx.release.wait_for(|released| *released).await;
    }
    let mut reading = Reading::new(shape, job, me, ctx);
    let read = consume::read(rx, job, &mut reading).await;
    let ended = reading.end(read);
    // A consumer that failed is done too: the run will not verify, but must not hang.
    ctx.mark_healthy_done();
    ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus::{LinkCause, NodeId};

    #[test]
    fn finds_the_node_an_error_names() {
        let link = plexus::Error::from(ExchangeError::LinkFailed {
            peer: NodeId(12),
            cause: LinkCause::Silent,
        });
        assert_eq!(named_node(&link), Some(12));
        let aborted = plexus::Error::from(ExchangeError::ProducerAborted {
            producer: Endpoint::new(NodeId(3), 1),
        });
        assert_eq!(named_node(&aborted), Some(3));
        assert_eq!(named_node(&plexus::Error::Missing("config")), None);
    }

    #[test]
    fn reads_a_node_number_from_text() {
        assert_eq!(node_in_text("link to node 17 failed: x"), Some(17));
        assert_eq!(node_in_text("the node is gone; node 4 died"), Some(4));
        assert_eq!(node_in_text("no node here"), None);
        assert_eq!(node_in_text("node "), None);
    }
}
