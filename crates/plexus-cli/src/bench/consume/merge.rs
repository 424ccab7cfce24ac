//! `--consume merge`: every consumer merges the sorted streams of all its job's producers
//! into one, by key, reading each message with `recv_from` from the producer whose head
//! has the smallest key.
//!
//! The key of a message is derived from its header alone: `seq · P + i`, where `P` is the
//! number of the job's producers and `i` the index of the header's producer among them
//! (sorted). Each producer's keys increase strictly along its channel, no two messages of
//! a job share a key, and the merged order is fully determined: every producer's message
//! `seq` in producer order, then every producer's `seq + 1`, ...
//!
//! Invariants: the merge holds at most one message (its head) per producer, outside the
//! library, and asks a producer for its next message only once its head was taken; every
//! message the merge emits goes through [`MergeOrder`] (keys strictly increasing) and the
//! usual verification, in emitted order; a message whose key cannot be read stops the
//! consumer.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use bytes::Bytes;
use plexus::Endpoint;

use super::super::roles::EndpointError;
use super::super::workload::Header;
use super::Reading;

/// The merge keys of one consumer's messages.
#[derive(Debug)]
struct MergeKeys {
    /// Workload id of each producer → its index among the job's producers.
    index: HashMap<u32, u32>,
    /// Producers of the job (P).
    producers: u128,
}

impl MergeKeys {
    /// The keys of a job whose producers have workload ids `ids`, in producer order.
    fn new(ids: impl IntoIterator<Item = u32>) -> MergeKeys {
        let index: HashMap<u32, u32> = ids.into_iter().zip(0..).collect();
        MergeKeys {
            producers: index.len() as u128,
            index,
        }
    }

    /// The key of `message`, from its header: `seq · P + i`.
    fn key(&self, message: &[u8]) -> Result<u128, String> {
        let header = Header::parse(message)
            .ok_or_else(|| format!("a {}-byte message has no header", message.len()))?;
        let i = self.index.get(&header.producer).ok_or_else(|| {
            format!(
                "a message of producer {} (seq {}), not one of the job's",
                header.producer, header.seq
            )
        })?;
        Ok(u128::from(header.seq) * self.producers + u128::from(*i))
    }
}

/// Checks that the keys of the merged stream increase strictly.
#[derive(Debug, Default)]
struct MergeOrder {
    last: Option<u128>,
}

impl MergeOrder {
    /// Takes the key of the next message emitted.
    fn check(&mut self, key: u128) -> Result<(), String> {
        if let Some(last) = self.last.filter(|&last| key <= last) {
            return Err(format!(
                "the merged stream went from key {last} to key {key}: not strictly increasing"
            ));
        }
        self.last = Some(key);
        Ok(())
    }
}

/// The message at the head of one producer's stream.
#[derive(Debug)]
struct Head {
    key: u128,
    /// Index of its producer.
    producer: usize,
    message: Bytes,
}

// A min-heap by key: `BinaryHeap` pops the greatest, so the order is reversed.
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.key, other.producer).cmp(&(self.key, self.producer))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

/// Merges the streams of `producers` (the job's, sorted) by key, handing the merged
/// stream to `reading`; stops at the first error.
pub async fn read(
    rx: &mut plexus::Consumer,
    producers: &[Endpoint],
    reading: &mut Reading<'_>,
) -> Result<(), EndpointError> {
    let keys = MergeKeys::new(producers.iter().map(|&p| reading.shape.producer_id(p)));
    let mut heads = BinaryHeap::with_capacity(producers.len());
    for (i, &p) in producers.iter().enumerate() {
        if let Some(head) = next_head(rx, p, i, &keys, reading).await? {
            heads.push(head);
        }
    }
    let mut order = MergeOrder::default();
    while let Some(head) = heads.pop() {
        order.check(head.key).map_err(|e| reading.refuse(e))?;
        let from = producers[head.producer];
        reading.accept(from, &head.message)?;
        if let Some(next) = next_head(rx, from, head.producer, &keys, reading).await? {
            heads.push(next);
        }
    }
    Ok(())
}

/// The next message of producer `p` (index `i`) with its key; `None` once it ended.
async fn next_head(
    rx: &mut plexus::Consumer,
    p: Endpoint,
    i: usize,
    keys: &MergeKeys,
    reading: &Reading<'_>,
) -> Result<Option<Head>, EndpointError> {
    match rx.recv_from(p).await {
        None => Ok(None),
        Some(Err(e)) => Err(reading.failed(&e)),
        Some(Ok(message)) => {
            let key = keys.key(&message).map_err(|e| reading.refuse(e))?;
            Ok(Some(Head {
                key,
                producer: i,
                message,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::workload::MessageFactory;
    use super::*;

    #[test]
    fn keys_come_from_the_header_and_interleave_the_producers() {
        let f = MessageFactory::new(1);
        // Workload ids 10, 11 and 20, in producer order.
        let keys = MergeKeys::new([10, 11, 20]);
        let key = |producer, seq| keys.key(&f.build(producer, 0, seq, 8));
        assert_eq!(key(10, 0), Ok(0));
        assert_eq!(key(11, 0), Ok(1));
        assert_eq!(key(20, 0), Ok(2));
        assert_eq!(key(10, 1), Ok(3));
        assert_eq!(key(20, 7), Ok(7 * 3 + 2));
        assert_eq!(
            key(20, u32::MAX),
            Ok(u128::from(u32::MAX) * 3 + 2),
            "no overflow"
        );
        assert!(key(12, 0).is_err(), "a producer outside the job");
        assert!(keys.key(&[0; 10]).is_err(), "no header");
    }

    #[test]
    fn the_merged_order_must_increase_strictly() {
        let mut order = MergeOrder::default();
        for key in [0, 1, 5, 6] {
            order.check(key).expect("increasing");
        }
        assert!(order.check(6).is_err(), "a repeated key");
        assert!(order.check(4).is_err(), "a smaller key");
        order.check(7).expect("the last accepted key is still 6");
    }

    #[test]
    fn the_heap_pops_the_smallest_key_first() {
        let head = |key, producer| Head {
            key,
            producer,
            message: Bytes::new(),
        };
        let mut heap: BinaryHeap<Head> = [head(5, 2), head(1, 0), head(3, 1)].into();
        let popped: Vec<u128> = std::iter::from_fn(|| heap.pop().map(|h| h.key)).collect();
        assert_eq!(popped, [1, 3, 5]);
    }
}
