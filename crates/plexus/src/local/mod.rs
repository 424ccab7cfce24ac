//! The attach protocol: processes on a machine use the machine's node through its agent
//! (`plexus agent`) over a Unix socket, with the same `Job` / `Producer` / `Consumer`
//! API as an embedded node.
//!
//! The agent owns the node (links, sessions, credit, admission, budget); an attached
//! process owns nothing but its handles. Credit holds end to end:
//! - a producer process sends a message to the agent only within a *window* the agent
//!   granted for that channel, and the agent grants a window only from credit the
//!   channel holds and has not spent, so what the agent takes from a process is always
//!   queued on the channel at once, never buffered beside it;
//! - a consumer process asks for messages (`Take`) when it has read the previous ones;
//!   the agent hands it up to 256 KiB of arrivals and keeps their credit out until the
//!   next `Take` says how many were read (the rest go back to the node, in order). So a
//!   consumer process that stops reading holds at most its pool, in the agent and in its
//!   own process together, and slows nobody else.
//!
//! A process that dies loses only its endpoints: its producers' unclosed channels abort
//! and its consumers' channels are cancelled, as when an embedded handle is dropped. An
//! agent that dies ends every attached process's waits with an error at once.
//!
//! Modules: `frames` (the byte layout), `agent` (the agent's side), `client` (a process's
//! side).

pub(crate) mod agent;
pub(crate) mod client;
pub(crate) mod frames;

pub use agent::AttachPolicy;
pub use client::AttachedNode;
