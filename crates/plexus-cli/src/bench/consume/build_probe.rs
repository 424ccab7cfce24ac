//! `--consume build-then-probe`: every consumer reads its job's producers as a hash join
//! does, the build side to its end with `recv_from_any(build)`, then the probe side with
//! `recv_from_any(probe)`. The build side is the first half of the job's producers
//! (sorted; `⌊P/2⌋` of them), the probe side the rest; a job has at least two producers in
//! this mode (see `Shape::new`), so neither side is empty.
//!
//! Invariants, checked by [`Phases`] on every message read: while the build side is read,
//! every message comes from a build producer; the probe side is read only once every build
//! producer's channel is complete; then every message comes from a probe producer.

use plexus::Endpoint;

use super::super::roles::EndpointError;
use super::Reading;

/// A job's producers, split into the build side and the probe side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sides {
    build: Vec<Endpoint>,
    probe: Vec<Endpoint>,
}

impl Sides {
    /// Splits `producers` (sorted): the first half builds, the rest probes.
    pub fn of(mut producers: Vec<Endpoint>) -> Sides {
        let probe = producers.split_off(producers.len() / 2);
        Sides {
            build: producers,
            probe,
        }
    }
}

/// Which side a consumer reads now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Build,
    Probe,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Build => "build",
            Side::Probe => "probe",
        }
    }
}

/// The phases of one consumer's reading, and the checks of what it reads in each.
#[derive(Debug)]
struct Phases<'a> {
    sides: &'a Sides,
    now: Side,
}

impl<'a> Phases<'a> {
    fn new(sides: &'a Sides) -> Self {
        Phases {
            sides,
            now: Side::Build,
        }
    }

    /// The producers read now.
    fn reading(&self) -> &'a [Endpoint] {
        match self.now {
            Side::Build => &self.sides.build,
            Side::Probe => &self.sides.probe,
        }
    }

    /// Checks a message read now from `from`.
    fn admit(&self, from: Endpoint) -> Result<(), String> {
        if self.reading().contains(&from) {
            return Ok(());
        }
        Err(format!(
            "read a message of producer {from} while reading the {} side, which it is not on",
            self.now.name()
        ))
    }

    /// Turns to the probe side, once the build side ended: only if every build producer
    /// delivered its whole channel (`has_all_of`).
    fn start_probe(&mut self, has_all_of: impl Fn(Endpoint) -> bool) -> Result<(), String> {
        if let Some(p) = self.sides.build.iter().find(|&&p| !has_all_of(p)) {
            return Err(format!(
                "the build side ended before producer {p} delivered its whole channel"
            ));
        }
        self.now = Side::Probe;
        Ok(())
    }
}

/// Reads the build side to its end, then the probe side, handing every message to
/// `reading`; stops at the first error.
pub async fn read(
    rx: &mut plexus::Consumer,
    sides: &Sides,
    reading: &mut Reading<'_>,
) -> Result<(), EndpointError> {
    let mut phases = Phases::new(sides);
    read_side(rx, &phases, reading).await?;
    phases
        .start_probe(|p| reading.has_all_of(p))
        .map_err(|e| reading.refuse(e))?;
    read_side(rx, &phases, reading).await
}

/// Reads the side `phases` is on until it ended.
async fn read_side(
    rx: &mut plexus::Consumer,
    phases: &Phases<'_>,
    reading: &mut Reading<'_>,
) -> Result<(), EndpointError> {
    while let Some(item) = rx.recv_from_any(phases.reading()).await {
        let (from, message) = item.map_err(|e| reading.failed(&e))?;
        phases.admit(from).map_err(|e| reading.refuse(e))?;
        reading.accept(from, &message)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use plexus::NodeId;

    use super::*;

    fn endpoints(n: u32) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::new(NodeId(i / 2), i % 2))
            .collect()
    }

    #[test]
    fn the_first_half_builds_and_the_rest_probes() {
        let all = endpoints(5);
        let sides = Sides::of(all.clone());
        assert_eq!(sides.build, all[..2]);
        assert_eq!(sides.probe, all[2..]);
        let two = Sides::of(endpoints(2));
        assert_eq!((two.build.len(), two.probe.len()), (1, 1));
    }

    #[test]
    fn nothing_of_the_probe_side_is_read_before_the_build_side_is_complete() {
        let all = endpoints(4);
        let sides = Sides::of(all.clone());
        let mut phases = Phases::new(&sides);
        phases.admit(all[1]).expect("a build producer");
        assert!(phases.admit(all[2]).is_err(), "a probe producer too early");
        let err = phases
            .start_probe(|p| p != all[1])
            .expect_err("producer 1 is not complete");
        assert!(err.contains(&all[1].to_string()), "{err}");
        assert_eq!(phases.now, Side::Build);
        phases
            .start_probe(|_| true)
            .expect("every build producer is complete");
        phases.admit(all[3]).expect("a probe producer");
        assert!(
            phases.admit(all[0]).is_err(),
            "a build producer after its end"
        );
    }
}
