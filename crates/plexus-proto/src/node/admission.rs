//! Admission of jobs to the nodes' memory budgets, in one order for the whole cluster, so
//! that no set of jobs can wait for each other in a cycle.
//!
//! A job reserves, on every node where it runs consumers, the credit pools of those
//! consumers (`consumers × credit_pool`). The nodes where it has consumers take their turn
//! in **ascending node id**: a node reserves the job's share only after the previous such
//! node did, and then sends `Reserved` to the next one. A node holds what it reserved
//! while the job runs (until its endpoints here are gone), and admits jobs whose turn has
//! come in the order their turn came (FIFO), each as soon as it fits. Nodes where the job
//! has no consumer reserve nothing and admit it at once.
//!
//! # Why no cycle can form
//! This is the lock-ordering argument, with a node's budget as the lock. A job *waits* at
//! node `j` only while it holds reservations on nodes below `j`; it never waits at `j`
//! while holding anything at or above `j`. What a waiting job at `j` waits for is one of:
//! - room at `j`, held by jobs admitted at `j`. Such a job holds only nodes ≤ `j` of its
//!   order and waits, if at all, at a node above `j`;
//! - the jobs ahead of it in `j`'s queue, which wait at `j` too, for the same reason.
//!
//! So every wait points to a job waiting at a higher node, or to one ahead in the same
//! queue: following waits, the pair (node, place in queue) only increases, and cannot
//! return to where it started. A job admitted on every node it needs waits for no other
//! job (the data path never waits on another channel), so it finishes and frees its room;
//! by induction from the highest node down, every job that fits each node alone is
//! admitted eventually, whatever order jobs reach the nodes in. A job that could never fit
//! a node is refused there at once. The admission timeout stays as the last safety net
//! (an application that never opens its endpoints on some node): the job fails there, and
//! `JobRefused` fails it on every node it spans.
//!
//! Invariants: `reserved` is the sum of the admitted jobs' needs and stays ≤ capacity −
//! send_buffer; a job is in `queue` exactly while it is `Queued`; every ask of the
//! application ends in `Event::Admitted` or `Event::AdmissionFailed` (or is answered at
//! once), and a failed job's waiters get its error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Event, ExchangeError, NodeCore};
use crate::frame::{Frame, RefuseCode};
use crate::ids::{JobId, NodeId};

/// Where one job's admission stands on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The application here has not asked yet.
    #[default]
    NotAsked,
    /// Asked; waiting for `Reserved` from `predecessor`, the previous node of the job's
    /// order.
    AwaitingTurn {
        predecessor: NodeId,
        need: u64,
        since: Instant,
    },
    /// Its turn came; waiting in this node's queue for room.
    Queued { need: u64, since: Instant },
    /// Admitted here, holding `need` bytes of the budget.
    Admitted { need: u64 },
    /// Was admitted; every consumer it runs here has closed, so its reservation went back.
    /// Producers may still open (they need no pool).
    Released,
}

impl Stage {
    /// The stage's name, for status views.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Stage::NotAsked => "not asked",
            Stage::AwaitingTurn { .. } => "awaiting turn",
            Stage::Queued { .. } => "queued",
            Stage::Admitted { .. } => "admitted",
            Stage::Released => "released",
        }
    }
}

/// One job's admission state on this node.
#[derive(Debug, Default)]
pub(crate) struct JobAdmission {
    pub stage: Stage,
    /// The node whose `Reserved` arrived: the job's turn here, if it is the predecessor.
    pub turn_from: Option<NodeId>,
    /// The next node of the job's order, told with `Reserved` once this node reserved.
    pub successor: Option<NodeId>,
    /// Consumers the job runs here: once that many have closed, its pools are free.
    pub consumers_here: u32,
}

impl JobAdmission {
    /// Whether the application waits for this job's admission here.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.stage,
            Stage::AwaitingTurn { .. } | Stage::Queued { .. }
        )
    }
}

/// Whether a job may open its endpoints here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Admitted,
    /// Wait for `Event::Admitted` (or `Event::AdmissionFailed`).
    Queued,
}

/// The admission queue and what admitted jobs reserved.
#[derive(Debug, Default)]
pub(crate) struct AdmissionQueue {
    /// Bytes reserved for admitted jobs' consumer pools.
    reserved: u64,
    /// Jobs whose turn came here and that wait for room, in the order their turn came.
    queue: VecDeque<JobId>,
    /// Every ask that had to wait, oldest first, for its timeout; entries whose job was
    /// answered meanwhile are dropped when they reach the front.
    asks: VecDeque<(Instant, JobId)>,
    /// Longest time a job waited before admission.
    pub longest_wait: Duration,
}

/// What one node runs of a job: how many consumers on each node.
fn order_around(
    me: NodeId,
    consumers_per_node: &[(NodeId, u32)],
) -> (u32, Option<NodeId>, Option<NodeId>) {
    let mut here = 0;
    let mut predecessor: Option<NodeId> = None;
    let mut successor: Option<NodeId> = None;
    for &(node, count) in consumers_per_node {
        if count == 0 {
            continue;
        }
        if node == me {
            here += count;
        } else if node < me {
            predecessor = Some(predecessor.map_or(node, |p| p.max(node)));
        } else {
            successor = Some(successor.map_or(node, |s| s.min(node)));
        }
    }
    (here, predecessor, successor)
}

impl NodeCore {
    /// Asks to admit `job`, which runs `consumers_per_node` consumers on each node (the
    /// whole topology: every node computes the same order from it). Without a memory
    /// budget the job is admitted here at once; it still passes its turn on, so that nodes
    /// with a budget see the same order.
    pub fn admit_job(
        &mut self,
        job: JobId,
        consumers_per_node: &[(NodeId, u32)],
    ) -> Result<Admission, ExchangeError> {
        self.may_start(job)?;
        if let Some(error) = self.job_failure(job) {
            return Err(error);
        }
        let me = self.config.node;
        let (here, predecessor, successor) = order_around(me, consumers_per_node);
        let need = u64::from(here) * self.config.credit_pool;
        let nodes = consumers_per_node.iter().map(|(n, _)| *n);
        self.register_job(job, nodes);
        let now = self.now;
        let budget = self.config.memory_budget;
        let room = self.pool_room();
        let state = self.job_entry(job);
        let admission = &mut state.admission;
        match admission.stage {
            Stage::Admitted { .. } | Stage::Released => return Ok(Admission::Admitted),
            Stage::AwaitingTurn { .. } | Stage::Queued { .. } => return Ok(Admission::Queued),
            Stage::NotAsked => {}
        }
        admission.successor = successor;
        admission.consumers_here = here;
        if need == 0 {
            // Not part of the order: reserves nothing, waits for nothing.
            admission.stage = Stage::Admitted { need: 0 };
            return Ok(Admission::Admitted);
        }
        if budget.is_none() {
            // Counted as reserved all the same, so the books balance when it is released.
            self.reserve(job, need);
            return Ok(Admission::Admitted);
        }
        if need > room {
            let error = ExchangeError::OverBudget {
                job,
                need,
                budget: room,
            };
            self.refuse_job(job, RefuseCode::OverBudget, error.clone());
            return Err(error);
        }
        match predecessor {
            Some(p) if admission.turn_from != Some(p) => {
                admission.stage = Stage::AwaitingTurn {
                    predecessor: p,
                    need,
                    since: now,
                };
                self.admission.asks.push_back((now, job));
                Ok(Admission::Queued)
            }
            _ => Ok(self.queue_for_room(job, need, now)),
        }
    }

    /// Admits `job` (whose turn has come) at once if nothing waits before it and it fits,
    /// or queues it. An ask asked `since` then; one that waited for its turn has its
    /// timeout running already.
    fn queue_for_room(&mut self, job: JobId, need: u64, since: Instant) -> Admission {
        let room = self.pool_room();
        if self.admission.queue.is_empty() && self.admission.reserved + need <= room {
            self.reserve(job, need);
            return Admission::Admitted;
        }
        if let Some(state) = self.jobs.get_mut(&job) {
            state.admission.stage = Stage::Queued { need, since };
        }
        self.admission.queue.push_back(job);
        if since == self.now {
            self.admission.asks.push_back((since, job));
        }
        Admission::Queued
    }

    /// What the budget has for consumer pools.
    fn pool_room(&self) -> u64 {
        self.config
            .memory_budget
            .unwrap_or(u64::MAX)
            .saturating_sub(self.config.send_buffer)
    }

    /// Reserves `need` for `job` and passes the turn on.
    fn reserve(&mut self, job: JobId, need: u64) {
        self.admission.reserved += need;
        if let Some(state) = self.jobs.get_mut(&job) {
            state.admission.stage = Stage::Admitted { need };
        }
        self.pass_turn(job);
    }

    /// Tells the next node of `job`'s order that its turn has come.
    fn pass_turn(&mut self, job: JobId) {
        let successor = self.jobs.get(&job).and_then(|j| j.admission.successor);
        if let Some(next) = successor {
            self.push_control(next, Frame::Reserved { job });
        }
    }

    /// A `Reserved` from `peer`: if it is `job`'s predecessor here, the job's turn came.
    pub(super) fn on_reserved(&mut self, peer: NodeId, job: JobId) {
        if !self.peer_may_name(job) {
            return;
        }
        let state = self.job_entry(job);
        if state.failed.is_some() {
            return;
        }
        state.admission.turn_from = Some(peer);
        if let Stage::AwaitingTurn {
            predecessor,
            need,
            since,
        } = state.admission.stage
        {
            if predecessor == peer && self.queue_for_room(job, need, since) == Admission::Admitted {
                self.admitted_after_wait(job, since);
            }
        }
    }

    /// Records the wait of a job that queued and is admitted now.
    fn admitted_after_wait(&mut self, job: JobId, since: Instant) {
        let waited = self.now.saturating_duration_since(since);
        self.admission.longest_wait = self.admission.longest_wait.max(waited);
        self.counters.admitted(waited);
        self.events.push_back(Event::Admitted { job });
    }

    /// Whether `job` may open endpoints here.
    pub(super) fn is_admitted(&self, job: JobId) -> bool {
        self.config.memory_budget.is_none()
            || self.jobs.get(&job).is_some_and(|j| {
                matches!(j.admission.stage, Stage::Admitted { .. } | Stage::Released)
            })
    }

    /// Gives `job`'s reservation back once every consumer it runs here has closed (its
    /// pools are free; producers need none), and admits what then fits; retires the job if
    /// nothing of it is left. Called when an endpoint closes.
    pub(super) fn release_job_if_idle(&mut self, job: JobId) {
        let consumers_done = self.jobs.get(&job).is_some_and(|j| {
            j.closed_consumers.len() >= j.admission.consumers_here as usize
                && self.consumers.count(job) == 0
        });
        if consumers_done {
            self.release_reservation(job);
        }
        self.retire_if_over(job);
    }

    /// Gives back what `job` reserved here, if anything.
    pub(super) fn release_reservation(&mut self, job: JobId) {
        let Some(state) = self.jobs.get_mut(&job) else {
            return;
        };
        if let Stage::Admitted { need } = state.admission.stage {
            state.admission.stage = Stage::Released;
            self.admission.reserved -= need;
            self.admit_waiting();
        }
    }

    /// Ends `job`'s wait for admission here, if it waits: its waiters get `error`.
    pub(super) fn abandon_admission(&mut self, job: JobId, error: &ExchangeError) {
        let Some(state) = self.jobs.get_mut(&job) else {
            return;
        };
        if !state.admission.is_pending() {
            return;
        }
        state.admission.stage = Stage::NotAsked;
        self.admission.queue.retain(|j| *j != job);
        self.events.push_back(Event::AdmissionFailed {
            job,
            error: error.clone(),
        });
        self.admit_waiting();
    }

    /// Admits queued jobs, in order, while the head fits.
    fn admit_waiting(&mut self) {
        let room = self.pool_room();
        while let Some(&job) = self.admission.queue.front() {
            let Some(Stage::Queued { need, since }) =
                self.jobs.get(&job).map(|j| j.admission.stage)
            else {
                self.admission.queue.pop_front();
                continue;
            };
            if self.admission.reserved + need > room {
                break;
            }
            self.admission.queue.pop_front();
            self.reserve(job, need);
            self.admitted_after_wait(job, since);
        }
        self.drop_answered_asks();
    }

    /// Drops the asks at the front of the timeout list that were answered.
    fn drop_answered_asks(&mut self) {
        while let Some(&(_, job)) = self.admission.asks.front() {
            let pending = self
                .jobs
                .get(&job)
                .is_some_and(|j| j.admission.is_pending());
            if pending {
                break;
            }
            self.admission.asks.pop_front();
        }
    }

    /// Fails the jobs that waited for admission longer than the timeout, here and on
    /// every node they span.
    pub(super) fn expire_admissions(&mut self, now: Instant) {
        let timeout = self.config.admission_timeout;
        self.drop_answered_asks();
        let mut expired = Vec::new();
        self.admission.asks.retain(|&(since, job)| {
            if now.saturating_duration_since(since) >= timeout {
                expired.push((job, since));
                false
            } else {
                true
            }
        });
        let room = self.pool_room();
        for (job, since) in expired {
            let need = match self.jobs.get(&job).map(|j| j.admission.stage) {
                Some(Stage::AwaitingTurn { need, .. } | Stage::Queued { need, .. }) => need,
                _ => continue,
            };
            let error = ExchangeError::AdmissionTimeout {
                job,
                waited: now.saturating_duration_since(since),
                need,
                budget: room,
            };
            self.refuse_job(job, RefuseCode::AdmissionTimeout, error);
        }
    }

    /// Checks that the admission books agree with the jobs' stages: `reserved` is the sum
    /// of the admitted jobs' needs, and the queue holds exactly the `Queued` jobs.
    pub(super) fn check_admission_books(&self) -> Result<(), String> {
        let reserved: u64 = self
            .jobs
            .values()
            .map(|j| match j.admission.stage {
                Stage::Admitted { need } => need,
                _ => 0,
            })
            .sum();
        if reserved != self.admission.reserved {
            return Err(format!(
                "{} bytes reserved, but admitted jobs need {reserved}",
                self.admission.reserved
            ));
        }
        let queued = self
            .jobs
            .values()
            .filter(|j| matches!(j.admission.stage, Stage::Queued { .. }))
            .count();
        if queued != self.admission.queue.len() {
            return Err(format!(
                "{queued} jobs queued for room, but the queue holds {}",
                self.admission.queue.len()
            ));
        }
        Ok(())
    }

    /// The longest time a job waited for admission here.
    pub fn longest_admission_wait(&self) -> Duration {
        self.admission.longest_wait
    }

    /// Jobs waiting for admission here (for their turn or for room), and the bytes
    /// admitted jobs reserved.
    pub fn admission_load(&self) -> (usize, u64) {
        let waiting = self
            .jobs
            .values()
            .filter(|j| j.admission.is_pending())
            .count();
        (waiting, self.admission.reserved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_finds_its_neighbours_in_the_order() {
        let plan = [
            (NodeId(4), 2),
            (NodeId(1), 1),
            (NodeId(2), 0),
            (NodeId(7), 3),
        ];
        assert_eq!(order_around(NodeId(1), &plan), (1, None, Some(NodeId(4))));
        assert_eq!(
            order_around(NodeId(4), &plan),
            (2, Some(NodeId(1)), Some(NodeId(7)))
        );
        assert_eq!(order_around(NodeId(7), &plan), (3, Some(NodeId(4)), None));
        // A node without consumers is outside the order.
        assert_eq!(
            order_around(NodeId(2), &plan),
            (0, Some(NodeId(1)), Some(NodeId(4)))
        );
    }
}
