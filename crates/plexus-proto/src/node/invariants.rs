//! The invariants that tie the core's tables together, checked on demand.
//!
//! Each table keeps its own counters (see `table`, `consumers`, `parking`); what no single
//! table can keep is how they agree with each other:
//! 1. an incoming channel is attached to its consumer (listed in its `channels`) exactly
//!    when it is not parked, and parked exactly when it is listed under its consumer in
//!    `parked` (whose count is then the number of parked records);
//! 2. an outgoing channel is `Live` under its key in its producer's slots, if the
//!    producer is still open;
//! 3. the consumers' granted credit covers what they hold unread, and each incoming
//!    channel's credit used never exceeds what it was granted;
//! 4. the send side's running total equals the sum over peers;
//! 5. every live job record that is pending admission is in the admission books.
//!
//! [`NodeCore::check_invariants`] walks every table: it is for tests (the deterministic
//! harness calls it after every drive) and for debugging, not for hot paths.

use super::state::{ChannelSlot, Peer};
use super::NodeCore;

impl NodeCore {
    /// Checks the invariants above; returns the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut parked_records = 0;
        for (in_key, ch) in self.in_channels.iter() {
            let attached = self
                .consumers
                .get(&ch.consumer)
                .is_some_and(|c| c.channels.contains_key(in_key));
            if ch.parked.is_some() {
                parked_records += 1;
                if attached {
                    return Err(format!("channel {in_key:?} is both parked and attached"));
                }
            } else if !attached {
                return Err(format!(
                    "channel {in_key:?} is neither parked nor attached to {:?}",
                    ch.consumer
                ));
            }
            if ch.received > ch.granted {
                return Err(format!("channel {in_key:?} used more credit than granted"));
            }
        }
        if parked_records != self.parked.len() {
            return Err(format!(
                "{parked_records} parked records, but {} listed as parked",
                self.parked.len()
            ));
        }
        for c in self.consumers.values() {
            c.check()?;
            for in_key in c.channels.keys() {
                if !self.in_channels.contains_key(in_key) {
                    return Err(format!("a consumer lists the unknown channel {in_key:?}"));
                }
            }
        }
        if self.consumers.unread() > self.consumers.granted() {
            return Err(format!(
                "consumers hold {} bytes unread but granted only {}",
                self.consumers.unread(),
                self.consumers.granted()
            ));
        }
        for (key, ch) in self.out_channels.iter() {
            if let Some(p) = self.producers.get(&ch.producer) {
                if p.channels.get(&ch.consumer) != Some(&ChannelSlot::Live(*key)) {
                    return Err(format!(
                        "outgoing channel {key:#x} is not live in its producer {:?}",
                        ch.producer
                    ));
                }
            }
        }
        let send: u64 = self.peers.values().map(Peer::buffered).sum();
        if send != self.send_buffered {
            return Err(format!(
                "send side total {} but peers hold {send}",
                self.send_buffered
            ));
        }
        self.check_admission_books()
    }
}
