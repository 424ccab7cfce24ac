//! How a system came through a run, from what its consumers saw: the column of the
//! comparison that says whether a system survives killed links, and whether a stalled
//! consumer blocked everyone.
//!
//! Invariants: a run that verified is `verified`, whatever else happened; otherwise a
//! duplicate seen by any consumer makes it `duplicated`, else a gap (messages missing
//! before one that arrived) makes it `lost`, else a run that reached its deadline with
//! endpoints still waiting is `blocked`, else it `failed` (an error reached an endpoint).

use serde::Serialize;

/// How a run of one system ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every consumer got every message exactly once, in order, intact.
    Verified,
    /// An endpoint saw an error and the data did not all arrive.
    Failed,
    /// A consumer found messages missing before one that arrived: the system went on
    /// without them.
    Lost,
    /// A consumer got a message twice.
    Duplicated,
    /// The run reached its deadline with endpoints still waiting.
    Blocked,
}

/// What went wrong in a run, as its consumers and its clock saw it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fates {
    /// Some consumer got a message twice.
    pub duplicated: bool,
    /// Some consumer found messages missing before one it got.
    pub lost: bool,
    /// The run reached its deadline before every endpoint ended.
    pub timed_out: bool,
}

impl Outcome {
    /// The outcome of a run that verified or not, with `fates`.
    pub fn of(verified: bool, fates: Fates) -> Outcome {
        if verified {
            Outcome::Verified
        } else if fates.duplicated {
            Outcome::Duplicated
        } else if fates.lost {
            Outcome::Lost
        } else if fates.timed_out {
            Outcome::Blocked
        } else {
            Outcome::Failed
        }
    }

    /// Its name, as the report spells it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::Failed => "failed",
            Outcome::Lost => "lost",
            Outcome::Duplicated => "duplicated",
            Outcome::Blocked => "blocked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_wins_then_duplicates_then_gaps_then_the_clock() {
        let all = Fates {
            duplicated: true,
            lost: true,
            timed_out: true,
        };
        assert_eq!(Outcome::of(true, all), Outcome::Verified);
        assert_eq!(Outcome::of(false, all), Outcome::Duplicated);
        let lost = Fates {
            duplicated: false,
            ..all
        };
        assert_eq!(Outcome::of(false, lost), Outcome::Lost);
        let blocked = Fates {
            lost: false,
            ..lost
        };
        assert_eq!(Outcome::of(false, blocked), Outcome::Blocked);
        assert_eq!(Outcome::of(false, Fates::default()), Outcome::Failed);
    }
}
