//! Batches through plexus endpoints: [`BatchSender`] encodes each consumer's batches into
//! its channel's IPC stream and hands the messages to a [`Producer`]; [`BatchReceiver`]
//! decodes what a [`Consumer`] receives, per producer.
//!
//! A sender keeps the messages a consumer has no credit for yet in that consumer's queue,
//! so one producer can serve every consumer that reads while another does not
//! ([`BatchSender::queue`], [`BatchSender::push`], [`BatchSender::ready`]); what it holds is
//! [`BatchSender::queued_bytes`], for the caller to bound.
//!
//! Invariants: a consumer's messages leave in the order they were queued, its stream's
//! end last (`finish`); `send`, `flush` and `finish` return only once every queued message
//! was taken (or a channel failed);
//! a receiver hands out each producer's batches in order, and reports a producer whose
//! stream ended inside an IPC message.

use std::collections::{HashMap, VecDeque};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use plexus::{Consumer, Endpoint, Producer};

use crate::{ChannelDecoder, ChannelEncoder, Error};

/// One consumer's channel: its encoder, the messages it did not take yet, and their
/// lengths (so that what it takes is counted without walking the queue).
struct Channel {
    encoder: ChannelEncoder,
    queue: VecDeque<Bytes>,
    lengths: VecDeque<usize>,
}

/// Sends record batches of one schema to the consumers of a producer's job.
pub struct BatchSender {
    producer: Producer,
    schema: SchemaRef,
    max_message: usize,
    /// Per consumer: its channel's encoder, and the messages it did not take yet.
    channels: HashMap<Endpoint, Channel>,
    queued_bytes: usize,
}

impl BatchSender {
    /// A sender of batches of `schema` through `producer`, in messages of at most
    /// `max_message` bytes (the nodes' `Config::max_message`).
    pub fn new(producer: Producer, schema: SchemaRef, max_message: usize) -> BatchSender {
        BatchSender {
            producer,
            schema,
            max_message,
            channels: HashMap::new(),
            queued_bytes: 0,
        }
    }

    /// Encodes `batch` for `to` and queues its messages behind that consumer's earlier
    /// ones; [`BatchSender::push`] hands them over.
    pub fn queue(&mut self, to: Endpoint, batch: &RecordBatch) -> Result<(), Error> {
        let (schema, max) = (&self.schema, self.max_message);
        let channel = self.channels.entry(to).or_insert_with(|| Channel {
            encoder: ChannelEncoder::new(schema.clone(), max),
            queue: VecDeque::new(),
            lengths: VecDeque::new(),
        });
        for message in channel.encoder.encode(batch)? {
            self.queued_bytes += message.len();
            channel.lengths.push_back(message.len());
            channel.queue.push_back(message);
        }
        Ok(())
    }

    /// Hands every consumer as many of its queued messages as its credit allows, without
    /// waiting; returns how many consumers still have messages queued.
    pub fn push(&mut self) -> Result<usize, Error> {
        let mut waiting = 0;
        for (&to, channel) in &mut self.channels {
            if channel.queue.is_empty() {
                continue;
            }
            let taken = self.producer.try_send_many(to, &mut channel.queue)?;
            let sent: usize = channel.lengths.drain(..taken).sum();
            self.queued_bytes -= sent;
            if !channel.queue.is_empty() {
                waiting += 1;
            }
        }
        Ok(waiting)
    }

    /// Waits until a consumer that could not take its messages may take more.
    pub async fn ready(&mut self) {
        self.producer.ready().await;
    }

    /// Bytes of messages queued and not yet taken by their consumers.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Sends `batch` to `to`, waiting until every message queued so far is taken.
    pub async fn send(&mut self, to: Endpoint, batch: &RecordBatch) -> Result<(), Error> {
        self.queue(to, batch)?;
        self.flush().await
    }

    /// Waits until every queued message was taken.
    pub async fn flush(&mut self) -> Result<(), Error> {
        while self.push()? > 0 {
            self.ready().await;
        }
        Ok(())
    }

    /// Sends everything queued and the end of every channel's stream, then closes the
    /// producer's channels and waits until every consumer's node has all of it.
    pub async fn finish(mut self) -> Result<(), Error> {
        for channel in self.channels.values_mut() {
            if let Some(end) = channel.encoder.finish() {
                self.queued_bytes += end.len();
                channel.lengths.push_back(end.len());
                channel.queue.push_back(end);
            }
        }
        self.flush().await?;
        Ok(self.producer.finish().await?)
    }

    /// The producer, for what this sender does not do.
    pub fn producer(&mut self) -> &mut Producer {
        &mut self.producer
    }
}

/// Receives the record batches of every producer of a consumer's job.
pub struct BatchReceiver {
    consumer: Consumer,
    decoders: HashMap<Endpoint, ChannelDecoder>,
    /// Batches decoded and not yet handed out.
    ready: VecDeque<(Endpoint, RecordBatch)>,
}

impl BatchReceiver {
    /// A receiver of what `consumer` gets.
    pub fn new(consumer: Consumer) -> BatchReceiver {
        BatchReceiver {
            consumer,
            decoders: HashMap::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next batch of some producer, an error, or `None` once every producer's stream
    /// has ended.
    pub async fn recv(&mut self) -> Option<Result<(Endpoint, RecordBatch), Error>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(Ok(item));
            }
            let (from, message) = match self.consumer.recv().await {
                Some(Ok(item)) => item,
                Some(Err(e)) => return Some(Err(e.into())),
                None => return self.end().err().map(Err),
            };
            let decoder = self.decoders.entry(from).or_default();
            match decoder.decode(message) {
                Ok(batches) => self.ready.extend(batches.into_iter().map(|b| (from, b))),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Checks, once the streams ended, that none ended inside an IPC message.
    fn end(&mut self) -> Result<(), Error> {
        for (&from, decoder) in &mut self.decoders {
            decoder.finish().map_err(|_| Error::Truncated(from))?;
        }
        Ok(())
    }

    /// The consumer, for what this receiver does not do.
    pub fn consumer(&mut self) -> &mut Consumer {
        &mut self.consumer
    }
}
