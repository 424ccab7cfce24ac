//! `plexus bench-node` (hidden): one node (or a group of consecutive nodes, with
//! `--nodes-per-process`) of `plexus bench --spawn`, in a process of its own, driven by
//! the coordinator over its stdin and stdout (see [`super::wire`]).
//!
//! Invariants: stdout carries protocol lines only (logs go to stderr); the node's
//! endpoints open only after `start` brought every node's address; a wave's `done` is sent
//! once, after every endpoint's outcome and the end of every task of the wave; the next
//! wave opens only when `wave` asks for it, after that; the node stays up after `done`
//! until `wave` or `exit` (answered by `bye`, with figures that cover the whole run) or the
//! end of stdin, so that peers still reading from it are served; the process exits when
//! the coordinator goes away.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use plexus::{Membership, Node, NodeId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::delivered::Delivered;
use super::host;
use super::memory;
use super::roles::EndpointEvent;
use super::shape::Shape;
use super::wire::{self, FromNode, Line, ToNode};

/// How often the node reports its consumers' progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Options of `plexus bench-node`, set by the coordinator.
#[derive(Clone, Debug, Args)]
pub struct NodeArgs {
    /// The id of the first node this process runs.
    #[arg(long)]
    pub node: u32,
    /// How many nodes (consecutive ids) this process runs.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// The run's shape, as JSON.
    #[arg(long)]
    pub shape: String,
}

/// Runs one node until the coordinator says `exit` or goes away.
pub fn main(args: NodeArgs) -> ExitCode {
    let result = serde_json::from_str::<Shape>(&args.shape)
        .map_err(|e| format!("bad --shape: {e}"))
        .and_then(|shape| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?;
            let result = runtime.block_on(serve(&shape, args.node, args.count));
            runtime.shutdown_timeout(Duration::from_millis(100));
            result
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("plexus bench-node {}: {error}", args.node);
            let _ = emit(&FromNode::Failed { error });
            ExitCode::from(2)
        }
    }
}

/// Writes one message to the coordinator.
fn emit(msg: &FromNode) -> Result<(), String> {
    wire::write_line(&mut std::io::stdout().lock(), msg)
        .map_err(|e| format!("cannot write to the coordinator: {e}"))
}

async fn serve(shape: &Shape, first: u32, count: u32) -> Result<(), String> {
    let ids: Vec<u32> = (first..first.saturating_add(count).min(shape.nodes())).collect();
    if ids.is_empty() {
        return Err(format!(
            "nodes {first}.. are not among the {} nodes",
            shape.nodes()
        ));
    }
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel();
    wire::read_lines::<ToNode, _, _>(std::io::stdin(), move |line| inbox_tx.send(line).is_ok());
    let membership = Membership::new();
    let mut nodes = Vec::with_capacity(ids.len());
    for &id in &ids {
        let node = host::start_node(shape, id, &membership).await?;
        emit(&FromNode::Ready {
            node: id,
            addr: node.local_addr(),
            pid: std::process::id(),
        })?;
        nodes.push(node);
    }
    let shutdown = |nodes: &[Node]| nodes.iter().for_each(Node::abort);
    let (addrs, hold_close, arrival) = match inbox.recv().await {
        Some(Line::Message(ToNode::Start {
            addrs,
            hold_close,
            arrival,
        })) => (addrs, hold_close, arrival),
        Some(
            Line::Message(
                ToNode::Exit | ToNode::Release | ToNode::CloseProducers | ToNode::Wave { .. },
            )
            | Line::Closed,
        )
        | None => {
            shutdown(&nodes);
            return Ok(());
        }
        Some(Line::Garbled(e)) => return Err(format!("bad message from the coordinator: {e}")),
    };
    if addrs.len() != shape.nodes() as usize {
        return Err(format!(
            "start brought {} addresses for {} nodes",
            addrs.len(),
            shape.nodes()
        ));
    }
    for (i, addr) in (0u32..).zip(addrs) {
        if !ids.contains(&i) {
            membership.insert(NodeId(i), addr);
        }
    }

    let (release_tx, release_rx) = watch::channel(false);
    let delivered = Arc::new(Delivered::default());
    let (close_tx, close_gate) = watch::channel(!hold_close);
    let launcher = host::Launcher::new(shape, arrival, &release_rx, &close_gate, &delivered);
    let expected: usize = ids.iter().map(|&id| shape.endpoints_on(id)).sum();
    let mut wave = Wave::start(&launcher, &nodes, 0, expected)?;
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            event = wave.events.recv(), if !wave.done() => match event {
                Some(EndpointEvent::Finished(outcome)) => {
                    emit(&FromNode::Endpoint { outcome })?;
                    wave.finished += 1;
                    if wave.done() {
                        wave.end(&delivered).await?;
                    }
                }
                Some(EndpointEvent::HealthyDone) => {
                    // The coordinator's count is up to date when the consumer is done.
                    emit(&progress_of(&delivered))?;
                    emit(&FromNode::HealthyDone)?;
                }
                None => return Err("the endpoint tasks ended without reporting".into()),
            },
            line = inbox.recv() => match line {
                Some(Line::Message(ToNode::Release)) => {
                    release_tx.send_replace(true);
                }
                Some(Line::Message(ToNode::CloseProducers)) => {
                    close_tx.send_replace(true);
                }
                Some(Line::Message(ToNode::Wave { wave: next })) => {
                    if !wave.done() || next != wave.number + 1 {
                        return Err(format!(
                            "wave {next} asked for while in wave {} ({} of {expected} endpoints ended)",
                            wave.number, wave.finished
                        ));
                    }
                    wave = Wave::start(&launcher, &nodes, next, expected)?;
                }
                Some(Line::Message(ToNode::Exit)) => {
                    emit(&bye(&nodes))?;
                    break;
                }
                Some(Line::Closed) | None => break,
                Some(Line::Message(ToNode::Start { .. })) => {
                    return Err("start received twice".into());
                }
                Some(Line::Garbled(e)) => {
                    return Err(format!("bad message from the coordinator: {e}"));
                }
            },
            _ = progress.tick(), if !wave.done() => {
                emit(&progress_of(&delivered))?;
            }
        }
    }
    shutdown(&nodes);
    drop(wave);
    Ok(())
}

/// The wave this process's nodes run, or last ran.
struct Wave {
    number: u32,
    events: mpsc::UnboundedReceiver<EndpointEvent>,
    tasks: JoinSet<()>,
    /// Endpoints here that ended, out of `expected`.
    finished: usize,
    expected: usize,
}

impl Wave {
    /// Opens the endpoints of wave `number` on `nodes` (`expected` in all); says `done`
    /// at once if there are none.
    fn start(
        launcher: &host::Launcher,
        nodes: &[Node],
        number: u32,
        expected: usize,
    ) -> Result<Wave, String> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let tasks = launcher.launch(nodes, number, &events_tx);
        let wave = Wave {
            number,
            events,
            tasks,
            finished: 0,
            expected,
        };
        if expected == 0 {
            emit(&wave.done_message())?;
        }
        Ok(wave)
    }

    /// Every endpoint of the wave here ended.
    fn done(&self) -> bool {
        self.finished >= self.expected
    }

    /// Lets the tasks of the ended wave finish (a failed endpoint lingers) and says `done`.
    async fn end(&mut self, delivered: &Delivered) -> Result<(), String> {
        while self.tasks.join_next().await.is_some() {}
        emit(&progress_of(delivered))?;
        emit(&self.done_message())
    }

    fn done_message(&self) -> FromNode {
        FromNode::Done {
            wave: self.number,
            rss_bytes: memory::rss_bytes(),
        }
    }
}

/// The `progress` message: what this process's consumers received so far.
fn progress_of(delivered: &Delivered) -> FromNode {
    FromNode::Progress {
        healthy: delivered.healthy(),
        stalled: delivered.stalled(),
    }
}

/// The `bye` message: this process's peak memory, and its nodes' link resumes, peak
/// buffered bytes and longest admission wait.
fn bye(nodes: &[Node]) -> FromNode {
    FromNode::Bye {
        rss_peak_bytes: memory::peak_rss_bytes().unwrap_or(0),
        resume_us: nodes
            .iter()
            .flat_map(host::resume_times)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .collect(),
        peak_buffered_bytes: nodes.iter().map(Node::peak_buffered).max().unwrap_or(0),
        admission_wait_us: nodes
            .iter()
            .map(|n| u64::try_from(n.longest_admission_wait().as_micros()).unwrap_or(u64::MAX))
            .max()
            .unwrap_or(0),
    }
}
