//! How a consumer reads its job's producers (`--consume`), and what reading in a chosen
//! order costs.
//!
//! - `interleaved` (the default): whatever arrives first, from any producer (`recv`);
//! - `merge` ([`merge`]): a k-way merge by key over every producer of the job, each message
//!   read with `recv_from` from the producer whose head has the smallest key;
//! - `build-then-probe` ([`build_probe`]): the first half of the job's producers (the build
//!   side) read to their end with `recv_from_any`, then the second half (the probe side).
//!
//! Every mode hands each message to one [`Reading`], which runs the usual verification
//! (every message of every producer exactly once, in order, intact) and counts it; the
//! ordered modes add their own check of the order. With an ordered mode, the bench then
//! runs the same shape again reading interleaved, and [`compare`] reports this run's
//! throughput against that one.
//!
//! Invariants: a consumer's producers are taken in one deterministic order, the job's
//! endpoints sorted (node, then slot), which is also the order of their workload ids; a
//! [`Reading`] sees every message the consumer read, before the next is read, and stops
//! the consumer at the first message it rejects; a run compared with an interleaved run
//! verifies only if that run verified too.

mod build_probe;
mod merge;

use clap::ValueEnum;
use plexus::Endpoint;
use serde::{Deserialize, Serialize};

use super::report::Report;
use super::roles::{ConsumerCtx, EndpointError, Moved};
use super::shape::Shape;
use super::workload::ChannelVerifier;

/// How every consumer reads the producers of its job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConsumeMode {
    /// Whatever arrives first, from any producer.
    #[default]
    Interleaved,
    /// A k-way merge by key over every producer of the job.
    Merge,
    /// The first half of the job's producers to their end, then the second half.
    BuildThenProbe,
}

impl ConsumeMode {
    /// The mode's name, as `--consume` spells it.
    pub fn name(self) -> &'static str {
        match self {
            ConsumeMode::Interleaved => "interleaved",
            ConsumeMode::Merge => "merge",
            ConsumeMode::BuildThenProbe => "build-then-probe",
        }
    }

    /// Whether the mode reads in an order of its own (and so is compared with
    /// interleaved reading).
    pub fn is_ordered(self) -> bool {
        self != ConsumeMode::Interleaved
    }
}

/// The producers of job `j`, sorted: the order every ordered mode numbers them in.
fn sorted_producers(shape: &Shape, j: u32) -> Vec<Endpoint> {
    let mut producers = shape.topology(j).producers().to_vec();
    producers.sort_unstable();
    producers.dedup();
    producers
}

/// What one consumer read so far: its verifier, its counts, and how it reports.
pub struct Reading<'a> {
    shape: &'a Shape,
    /// "job N consumer E", the start of every error.
    context: String,
    verifier: ChannelVerifier,
    moved: Moved,
    ctx: &'a mut ConsumerCtx,
}

impl<'a> Reading<'a> {
    /// Nothing read yet by consumer `me` of job `j`.
    pub fn new(shape: &'a Shape, j: u32, me: Endpoint, ctx: &'a mut ConsumerCtx) -> Self {
        Reading {
            shape,
            context: format!("job {} consumer {me}", Shape::job_id(j).0),
            verifier: shape.consumer_verifier(j, me),
            moved: Moved::default(),
            ctx,
        }
    }

    /// Verifies `message`, which the library says came from `from`, and counts it.
    fn accept(&mut self, from: Endpoint, message: &[u8]) -> Result<(), EndpointError> {
        self.verifier
            .accept(self.shape.producer_id(from), message)
            .map_err(|e| self.refuse(e))?;
        let len = message.len() as u64;
        self.moved.bytes += len;
        self.moved.messages += 1;
        self.ctx.received(len, self.verifier.is_complete());
        Ok(())
    }

    /// Whether producer `p` delivered its whole channel.
    fn has_all_of(&self, p: Endpoint) -> bool {
        self.verifier.is_channel_complete(self.shape.producer_id(p))
    }

    /// The library's error, seen by this consumer.
    fn failed(&self, error: &plexus::Error) -> EndpointError {
        EndpointError::plexus(self.context.clone(), error)
    }

    /// What this consumer found wrong in what it read.
    fn refuse(&self, what: impl std::fmt::Display) -> EndpointError {
        EndpointError::other(format!("{}: {what}", self.context))
    }

    /// Ends the reading: what it moved, and its first error, or failing that what the
    /// verifier finds missing.
    pub fn end(self, read: Result<(), EndpointError>) -> (Moved, Option<EndpointError>) {
        let error = match read {
            Err(e) => Some(e),
            Ok(()) => self.verifier.finish().err().map(|e| self.refuse(e)),
        };
        (self.moved, error)
    }
}

/// Reads everything consumer `rx` of job `j` is to get, in the mode of the shape of
/// `reading`, handing it every message; stops at the first error.
pub async fn read(
    rx: &mut plexus::Consumer,
    j: u32,
    reading: &mut Reading<'_>,
) -> Result<(), EndpointError> {
    let shape = reading.shape;
    match shape.consume() {
        ConsumeMode::Interleaved => {
            while let Some(item) = rx.recv().await {
                let (from, message) = item.map_err(|e| reading.failed(&e))?;
                reading.accept(from, &message)?;
            }
            Ok(())
        }
        ConsumeMode::Merge => merge::read(rx, &sorted_producers(shape, j), reading).await,
        ConsumeMode::BuildThenProbe => {
            let sides = build_probe::Sides::of(sorted_producers(shape, j));
            build_probe::read(rx, &sides, reading).await
        }
    }
}

/// Puts the interleaved run of the same shape beside `report`, an ordered run that
/// verified: its throughput, and this run's ratio to it. An interleaved run that failed,
/// or did not verify, fails this one too, with its errors.
pub fn compare(report: &mut Report, interleaved: Result<Report, String>) {
    let prefix = "the interleaved run for comparison";
    match interleaved {
        Err(e) => {
            report.verified = false;
            report.errors.push(format!("{prefix}: {e}"));
        }
        Ok(other) if !other.verified => {
            report.verified = false;
            if other.errors.is_empty() {
                report.errors.push(format!("{prefix} did not verify"));
            }
            let named = other.errors.iter().map(|e| format!("{prefix}: {e}"));
            report.errors.extend(named);
        }
        Ok(other) => {
            let theirs = other.throughput_bytes_per_s;
            report.interleaved_throughput_bytes_per_s = Some(theirs);
            report.ratio_vs_interleaved =
                (theirs > 0.0).then(|| report.throughput_bytes_per_s / theirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::shape::tests::spec;
    use super::super::verdict::{judge, RunRecord};
    use super::*;

    /// A report of `shape` at `throughput` bytes/s, verified or not.
    fn report(shape: &Shape, throughput: f64, verified: bool) -> Report {
        let mut r = judge(
            shape,
            RunRecord {
                elapsed_s: 1.0,
                ..RunRecord::default()
            },
        );
        r.throughput_bytes_per_s = throughput;
        r.verified = verified;
        r.errors.clear();
        r
    }

    #[test]
    fn the_ratio_is_against_an_interleaved_run_that_verified() {
        let shape = Shape::new(spec(2, None, 1)).expect("valid");
        let mut ours = report(&shape, 600.0, true);
        compare(&mut ours, Ok(report(&shape, 1000.0, true)));
        assert!(ours.verified);
        assert_eq!(ours.interleaved_throughput_bytes_per_s, Some(1000.0));
        assert_eq!(ours.ratio_vs_interleaved, Some(0.6));

        let mut ours = report(&shape, 600.0, true);
        compare(&mut ours, Ok(report(&shape, 1000.0, false)));
        assert!(!ours.verified);
        assert_eq!(ours.ratio_vs_interleaved, None);
        assert!(
            ours.errors[0].contains("did not verify"),
            "{:?}",
            ours.errors
        );

        let mut ours = report(&shape, 600.0, true);
        compare(&mut ours, Err("cannot start".into()));
        assert!(!ours.verified);
        assert!(
            ours.errors[0].ends_with("cannot start"),
            "{:?}",
            ours.errors
        );
    }

    #[test]
    fn producers_are_numbered_in_endpoint_order_whatever_the_job_placement() {
        // Job 2 of 3 on 5 nodes, 2 per job, uses nodes 4 and 0: in that round-robin order.
        let shape = Shape::new(spec(5, Some(2), 3)).expect("valid");
        let sorted = sorted_producers(&shape, 2);
        let nodes: Vec<u32> = sorted.iter().map(|p| p.node.0).collect();
        assert_eq!(nodes, [0, 0, 4, 4]);
        let ids: Vec<u32> = sorted.iter().map(|&p| shape.producer_id(p)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    #[test]
    fn modes_are_spelled_as_on_the_command_line() {
        for mode in [
            ConsumeMode::Interleaved,
            ConsumeMode::Merge,
            ConsumeMode::BuildThenProbe,
        ] {
            let json = serde_json::to_string(&mode).expect("encode");
            assert_eq!(json, format!("\"{}\"", mode.name()));
            let parsed = ConsumeMode::from_str(mode.name(), false).expect("parse");
            assert_eq!(parsed, mode);
        }
        assert!(!ConsumeMode::default().is_ordered());
    }
}
