//! `plexus bench-endpoint` (hidden): one endpoint of `plexus bench --agent`, in a process of
//! its own, attached to its node's agent (`plexus::Node::attach`), driven by the
//! coordinator over its stdin and stdout (see [`super::wire`]). It runs the workload's role
//! ([`super::roles`]): a producer sends its plan to every consumer of its job, holds its
//! close while the coordinator says so, and closes; a consumer verifies every message of
//! every producer of its job, stalling until the release if the shape says so, and once
//! it ended reports its peak of credit outstanding (`Consumer::credit`: what the agent and
//! this process held together) with its outcome.
//!
//! Invariants: stdout carries protocol lines only (logs go to stderr); the process
//! attaches and opens its job handle before it says `ready`, and opens its endpoint only
//! after `start`; a consumer says `opened` once it tried to open; it reports its
//! endpoint's outcome exactly once; an endpoint that failed
//! keeps its handle open for [`FAILED_LINGER`] (or until `exit`), so that its own drop,
//! which aborts or cancels its channels, does not mask from the job's other endpoints the
//! failure they are about to see; an error that says the agent is gone names the agent's
//! node; the process exits on `exit`, or as soon as the coordinator goes away (its stdin
//! ends), whatever it is doing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use plexus::{Endpoint, Node, NodeId};
use tokio::sync::{mpsc, watch};

use super::child::PROGRESS_EVERY;
use super::delivered::Delivered;
use super::host::{BODY_SEED, FAILED_LINGER};
use super::roles::{
    self, wall_us, ConsumerCtx, EndpointError, EndpointEvent, EndpointOutcome, Role,
};
use super::shape::Shape;
use super::wire::{self, FromEndpoint, Line, ToEndpoint};
use super::workload::MessageFactory;

/// The longest a consumer waits for its agent to tell its credit figures.
const CREDIT_BOUND: Duration = Duration::from_secs(2);

/// Options of `plexus bench-endpoint`, set by the coordinator.
#[derive(Clone, Debug, Args)]
pub struct EndpointArgs {
    /// The agent's socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The agent's node.
    #[arg(long)]
    pub node: u32,
    /// The job's index (its id is one more).
    #[arg(long)]
    pub job: u32,
    /// Producer or consumer.
    #[arg(long, value_enum)]
    pub role: Role,
    /// The endpoint's slot on its node.
    #[arg(long)]
    pub slot: u32,
    /// The run's shape, as JSON.
    #[arg(long)]
    pub shape: String,
}

/// Runs one endpoint until the coordinator says `exit` or goes away.
pub fn main(args: EndpointArgs) -> ExitCode {
    let result = serde_json::from_str::<Shape>(&args.shape)
        .map_err(|e| format!("bad --shape: {e}"))
        .and_then(|shape| {
            check(&shape, &args)?;
            // One endpoint needs no more than one thread.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?;
            let result = runtime.block_on(serve(&shape, &args));
            runtime.shutdown_timeout(Duration::from_millis(100));
            result
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "plexus bench-endpoint ({:?} {}/{} of job index {}): {error}",
                args.role, args.node, args.slot, args.job
            );
            let _ = emit(&FromEndpoint::Failed { error });
            ExitCode::from(2)
        }
    }
}

/// Checks that the endpoint is one of the shape's.
fn check(shape: &Shape, args: &EndpointArgs) -> Result<(), String> {
    let slots = match args.role {
        Role::Producer => shape.producers(),
        Role::Consumer => shape.consumers(),
    };
    if args.job >= shape.jobs() || !shape.job_uses(args.job, args.node) || args.slot >= slots {
        return Err("not an endpoint of the shape".into());
    }
    Ok(())
}

/// Writes one message to the coordinator.
fn emit(msg: &FromEndpoint) -> Result<(), String> {
    wire::write_line(&mut std::io::stdout().lock(), msg)
        .map_err(|e| format!("cannot write to the coordinator: {e}"))
}

/// What the coordinator says after `start`, as watches.
struct Control {
    release: watch::Receiver<bool>,
    close_gate: watch::Receiver<bool>,
    /// Turns true on `exit`, or when the coordinator goes away.
    exit: watch::Receiver<bool>,
}

impl Control {
    /// Forwards the coordinator's lines from `inbox` to the watches, from now on; a
    /// producer's close is held at first if `hold_close`.
    fn start(mut inbox: mpsc::UnboundedReceiver<Line<ToEndpoint>>, hold_close: bool) -> Control {
        let (release_tx, release) = watch::channel(false);
        let (close_tx, close_gate) = watch::channel(!hold_close);
        let (exit_tx, exit) = watch::channel(false);
        tokio::spawn(async move {
            while let Some(line) = inbox.recv().await {
                match line {
                    Line::Message(ToEndpoint::Release) => {
                        release_tx.send_replace(true);
                    }
                    Line::Message(ToEndpoint::CloseProducers) => {
                        close_tx.send_replace(true);
                    }
                    Line::Message(ToEndpoint::Exit) | Line::Closed => break,
                    Line::Message(ToEndpoint::Start { .. }) | Line::Garbled(_) => {
                        tracing::warn!(?line, "unexpected line from the coordinator");
                    }
                }
            }
            exit_tx.send_replace(true);
        });
        Control {
            release,
            close_gate,
            exit,
        }
    }

    /// Waits for `exit`.
    async fn exit(&self) {
        let _ = self.exit.clone().wait_for(|exit| *exit).await;
    }
}

async fn serve(shape: &Shape, args: &EndpointArgs) -> Result<(), String> {
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel();
    wire::read_lines::<ToEndpoint, _, _>(std::io::stdin(), move |line| inbox_tx.send(line).is_ok());
    let attached = Node::attach(&args.socket).await.map_err(|e| {
        format!(
            "attaching to the agent of node {} at {}: {e}",
            args.node,
            args.socket.display()
        )
    })?;
    if attached.id() != NodeId(args.node) {
        return Err(format!(
            "the agent at {} runs {}, not node {}",
            args.socket.display(),
            attached.id(),
            args.node
        ));
    }
    let job = attached.job(shape.node_job_id(args.job), shape.topology(args.job));
    emit(&FromEndpoint::Ready {
        pid: std::process::id(),
    })?;
    let hold_close = match inbox.recv().await {
        Some(Line::Message(ToEndpoint::Start { hold_close })) => hold_close,
        Some(Line::Message(ToEndpoint::Exit) | Line::Closed) | None => return Ok(()),
        Some(Line::Message(other)) => return Err(format!("{other:?} before start")),
        Some(Line::Garbled(e)) => return Err(format!("bad message from the coordinator: {e}")),
    };
    let control = Control::start(inbox, hold_close);
    let me = Endpoint::new(NodeId(args.node), args.slot);
    let run = Run {
        shape,
        j: args.job,
        me,
        delivered: Arc::new(Delivered::default()),
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (mut outcome, held) = {
        let role = run.role(&job, args.role, &control, events_tx);
        tokio::pin!(role);
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        let mut exit = control.exit.clone();
        loop {
            tokio::select! {
                ended = &mut role => break ended,
                Some(EndpointEvent::HealthyDone) = events.recv() => run.healthy_done()?,
                _ = progress.tick(), if args.role == Role::Consumer => emit(&run.progress())?,
                _ = exit.wait_for(|exit| *exit) => return Ok(()),
            }
        }
    };
    while let Ok(EndpointEvent::HealthyDone) = events.try_recv() {
        run.healthy_done()?;
    }
    if args.role == Role::Consumer {
        emit(&run.progress())?;
    }
    if let Some(error) = outcome.error.as_mut().filter(|e| e.agent_lost) {
        // The agent this process attached to is gone: the error concerns its node.
        error.names_node = Some(args.node);
    }
    let failed = outcome.error.is_some();
    emit(&FromEndpoint::Endpoint { outcome })?;
    if failed {
        let _ = tokio::time::timeout(FAILED_LINGER, control.exit()).await;
    }
    drop(held);
    drop(job);
    control.exit().await;
    Ok(())
}

/// A handle whose drop waits until the endpoint's failure is reported.
enum Held {
    Producer(plexus::Producer),
    Consumer(plexus::Consumer),
}

/// One endpoint's run.
struct Run<'a> {
    shape: &'a Shape,
    j: u32,
    me: Endpoint,
    /// What the consumer received.
    delivered: Arc<Delivered>,
}

impl Run<'_> {
    /// Opens the endpoint on `job` and runs its role; returns its outcome, with the
    /// handle of an endpoint that failed.
    async fn role(
        &self,
        job: &plexus::Job,
        role: Role,
        control: &Control,
        events: mpsc::UnboundedSender<EndpointEvent>,
    ) -> (EndpointOutcome, Option<Held>) {
        let stalled = role == Role::Consumer && self.shape.is_stalled(self.j, self.me);
        let opening = match role {
            Role::Producer => job.producer(self.me.slot).await.map(Held::Producer),
            Role::Consumer => {
                let opening = job.consumer(self.me.slot).await.map(Held::Consumer);
                // Producers start once every consumer is open; a failure to tell the
                // coordinator shows as this process's silence, which the run's
                // deadline bounds.
                let _ = emit(&FromEndpoint::Opened);
                opening
            }
        };
        let handle = match opening {
            Ok(handle) => handle,
            Err(e) => {
                if role == Role::Consumer && !stalled {
                    // Nobody waits for it now.
                    let _ = events.send(EndpointEvent::HealthyDone);
                }
                let context = format!(
                    "opening {role:?} {} of job {}",
                    self.me,
                    Shape::job_id(self.j).0
                )
                .to_lowercase();
                let outcome = EndpointOutcome {
                    error: Some(EndpointError::plexus(context, &e)),
                    ..EndpointOutcome::ending_now(self.j, self.me, role, stalled, None)
                };
                return (outcome, None);
            }
        };
        let opened_us = Some(wall_us());
        let (moved, error, held, peak_buffered) = match handle {
            Held::Producer(tx) => {
                let factory = MessageFactory::new(BODY_SEED);
                let gate = control.close_gate.clone();
                let (moved, error, held) =
                    roles::run_producer(tx, self.shape, self.j, &factory, gate).await;
                (moved, error, held.map(Held::Producer), 0)
            }
            Held::Consumer(mut rx) => {
                let mut ctx = ConsumerCtx::new(
                    stalled,
                    control.release.clone(),
                    events,
                    self.delivered.clone(),
                );
                let (moved, error) = roles::consume(&mut rx, self.shape, self.j, &mut ctx).await;
                // As the other modes read `Node::consumer_credit` once the consumer ended:
                // its peak of credit outstanding, here what the agent and this process
                // held together. Unknown (0) if the agent cannot tell any more.
                let peak = match tokio::time::timeout(CREDIT_BOUND, rx.credit()).await {
                    Ok(Ok(credit)) => credit.peak,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "cannot read the consumer's credit");
                        0
                    }
                    Err(_) => {
                        tracing::debug!("the agent did not tell the consumer's credit in time");
                        0
                    }
                };
                let held = error.is_some().then_some(Held::Consumer(rx));
                (moved, error, held, peak)
            }
        };
        let outcome = EndpointOutcome {
            bytes: moved.bytes,
            messages: moved.messages,
            peak_buffered,
            error,
            ..EndpointOutcome::ending_now(self.j, self.me, role, stalled, opened_us)
        };
        (outcome, held)
    }

    /// What the consumer received so far.
    fn progress(&self) -> FromEndpoint {
        FromEndpoint::Progress {
            healthy: self.delivered.healthy(),
            stalled: self.delivered.stalled(),
        }
    }

    /// Says that the consumer is done, with its final count first.
    fn healthy_done(&self) -> Result<(), String> {
        emit(&self.progress())?;
        emit(&FromEndpoint::HealthyDone)
    }
}
