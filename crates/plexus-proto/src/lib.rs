//! plexus-proto: the sans-IO protocol core of plexus.
//!
//! Everything here is a pure state machine: no sockets, no threads, no clock. Inputs are
//! `handle_*` calls (bytes received, time passed, application commands); outputs are `poll_*`
//! calls (bytes to send, events for the application, the next timer). The runtime crate moves
//! bytes between sockets and this core and does nothing else.

#![forbid(unsafe_code)]

pub mod auth;
pub mod batch;
pub mod codec;
pub mod config;
pub mod frame;
pub mod ids;
mod jitter;
pub mod map;

pub use bytes::Bytes;
pub use frame::Frame;
pub use ids::{Endpoint, JobId, NodeId, WireChannel};
pub mod credit;
pub mod node;
pub mod scheduler;

pub use config::Config;
pub use node::{
    Event, ExchangeError, LinkCause, LinkId, NodeCore, Recv, Scope, Stats, Transmit, TrySendError,
};
