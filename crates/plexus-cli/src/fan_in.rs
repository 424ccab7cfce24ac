//! A consumer's one queue, fed by the streams of all its producers (the gRPC and Arrow
//! Flight baselines): each stream hands over its messages, then its end or its failure,
//! and the consumer reads them as one stream.
//!
//! Invariants: the stream ends once every producer's stream has ended (each reports its
//! end exactly once); a failure reaches the consumer as an error, in its place among the
//! messages; a queue whose every sender is gone before then is an error, never a silent
//! end.

use tokio::sync::mpsc;

/// What a producer's stream hands to its consumer's queue.
pub enum Item<T> {
    /// A message.
    Message(T),
    /// The stream ended after everything it sent.
    End,
    /// The stream failed.
    Failed(String),
}

/// A consumer's queue; see the module docs.
pub struct FanIn<T> {
    queue: mpsc::Receiver<Item<T>>,
    /// Producers whose stream has not ended yet.
    producers_left: usize,
}

impl<T> FanIn<T> {
    /// Reads `queue`, fed by the streams of `producers` producers.
    pub fn new(queue: mpsc::Receiver<Item<T>>, producers: usize) -> FanIn<T> {
        FanIn {
            queue,
            producers_left: producers,
        }
    }

    /// The next message, an error, or `None` once every producer's stream has ended.
    pub async fn next(&mut self) -> Option<Result<T, String>> {
        loop {
            if self.producers_left == 0 {
                return None;
            }
            match self.queue.recv().await {
                Some(Item::Message(message)) => return Some(Ok(message)),
                Some(Item::End) => self.producers_left -= 1,
                Some(Item::Failed(e)) => return Some(Err(e)),
                None => return Some(Err("every stream's sender is gone".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ends_after_every_producer_ended_and_passes_failures_on() {
        let (tx, rx) = mpsc::channel(8);
        let mut fan_in = FanIn::new(rx, 2);
        for item in [
            Item::Message(1),
            Item::End,
            Item::Failed("x".into()),
            Item::End,
        ] {
            tx.send(item).await.expect("room");
        }
        assert_eq!(fan_in.next().await, Some(Ok(1)));
        assert_eq!(fan_in.next().await, Some(Err("x".to_string())));
        assert_eq!(fan_in.next().await, None);
        let (tx, rx) = mpsc::channel::<Item<u8>>(1);
        drop(tx);
        assert!(matches!(FanIn::new(rx, 1).next().await, Some(Err(_))));
    }
}
