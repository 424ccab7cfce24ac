//! The messages between the coordinator and its processes (the node processes of
//! `--spawn`, the endpoint processes of `--agent`): one JSON object per line, on the
//! process's stdin (coordinator to process) and stdout (process to coordinator); the
//! process logs on stderr only.
//!
//! A node process's conversation:
//!
//! ```text
//! node → {"type":"ready","node":i,"addr":"127.0.0.2:41234","pid":4242}
//! coord → {"type":"start","addrs":[…],"hold_close":b,       every node's address, by id:
//!          "arrival":{"order":…,"seed":…}}                    run wave 0
//! coord → {"type":"close_producers"}                          producers holding may close
//! node → {"type":"endpoint","outcome":{…}}                    once per endpoint, as it ends
//! node → {"type":"healthy_done"}                              once per non-stalled consumer
//! node → {"type":"progress","healthy":…,"stalled":…}          every 250 ms until done, and
//!                                                             before each healthy_done
//! coord → {"type":"release"}                                  every healthy consumer is done
//! node → {"type":"done","wave":w,"rss_bytes":…}             every endpoint of wave w ended
//! coord → {"type":"wave","wave":w}                            every node is done with wave
//!                                                             w − 1: run wave w
//! coord → {"type":"exit"}                                     every node is done: stop
//! node → {"type":"bye","rss_peak_bytes":…,"resume_us":[…]}    then it exits
//! node → {"type":"failed","error":"…"}                        instead, when it cannot go on
//! ```
//!
//! A node process whose stdin ends exits at once, without `bye`.
//!
//! An endpoint process of `--agent` (one endpoint, attached to its node's agent) speaks a
//! shorter conversation of the same kind:
//!
//! ```text
//! endpoint → {"type":"ready","pid":4242}                      attached, its job handle open
//! coord → {"type":"start","hold_close":b}                      open the endpoint and run:
//!                                                              consumers first, producers
//!                                                              once every consumer opened
//! endpoint → {"type":"opened"}                                 a consumer is open (or could
//!                                                              not open: its outcome follows)
//! coord → {"type":"close_producers"}                           a producer holding may close
//! endpoint → {"type":"progress","healthy":…,"stalled":…}       a consumer, every 250 ms and
//!                                                              before its healthy_done
//! endpoint → {"type":"healthy_done"}                           a non-stalled consumer is done
//! coord → {"type":"release"}                                   every healthy consumer is done
//! endpoint → {"type":"endpoint","outcome":{…}}                 once, as its endpoint ends
//! coord → {"type":"exit"}                                      the run is over: exit
//! endpoint → {"type":"failed","error":"…"}                     instead, when it cannot go on
//! ```
//!
//! An endpoint process whose stdin ends exits at once.
//!
//! Invariants: a line is written whole and flushed; a reader delivers every line in
//! order, then [`Line::Closed`] exactly once, when its stream ends or breaks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::arrival::Arrival;
use super::roles::EndpointOutcome;

/// From a node process to the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromNode {
    /// The node listens at `addr`.
    Ready {
        /// The node's id.
        node: u32,
        /// Where it listens.
        addr: SocketAddr,
        /// Its process id.
        pid: u32,
    },
    /// One endpoint ended.
    Endpoint {
        /// How.
        outcome: EndpointOutcome,
    },
    /// A non-stalled consumer is done.
    HealthyDone,
    /// Payload bytes the node's consumers received so far.
    Progress {
        /// Received by consumers that do not stall.
        healthy: u64,
        /// Received by consumers that stall.
        stalled: u64,
    },
    /// Every endpoint of the wave ended on the node; the node stays up for its peers until
    /// `wave` or `exit`.
    Done {
        /// The wave (0-based).
        #[serde(default)]
        wave: u32,
        /// The process's resident memory now, if known.
        #[serde(default)]
        rss_bytes: Option<u64>,
    },
    /// The node is shutting down, as `exit` asked.
    Bye {
        /// The process's peak resident memory.
        rss_peak_bytes: u64,
        /// How long each link of the node was down before it resumed, in µs.
        resume_us: Vec<u64>,
        /// The most bytes the node had buffered at once.
        #[serde(default)]
        peak_buffered_bytes: u64,
        /// The longest a job waited for admission on the node, in µs.
        #[serde(default)]
        admission_wait_us: u64,
    },
    /// The node cannot go on.
    Failed {
        /// Why.
        error: String,
    },
}

/// From the coordinator to a node process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToNode {
    /// Every node's address (index = node id): open the endpoints and run.
    Start {
        /// The addresses.
        addrs: Vec<SocketAddr>,
        /// Producers hold their close until `close_producers` (a node is to be killed
        /// while every job is still in progress).
        hold_close: bool,
        /// The order in which each node asks for its jobs.
        #[serde(default)]
        arrival: Arrival,
    },
    /// Every node is done with the previous wave: open and run this one's endpoints.
    Wave {
        /// The wave (0-based; at least 1, wave 0 comes with `start`).
        wave: u32,
    },
    /// Stalled consumers may read now.
    Release,
    /// Producers holding their close may close now.
    CloseProducers,
    /// Say `bye`, shut the node down and exit.
    Exit,
}

/// From an endpoint process (`--agent`) to the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromEndpoint {
    /// The process attached to its agent and opened its job handle.
    Ready {
        /// Its process id.
        pid: u32,
    },
    /// Its consumer is open (or could not open; its outcome follows).
    Opened,
    /// Its endpoint ended.
    Endpoint {
        /// How.
        outcome: EndpointOutcome,
    },
    /// Its consumer, which does not stall, is done.
    HealthyDone,
    /// Payload bytes its consumer received so far.
    Progress {
        /// Received, if the consumer does not stall.
        healthy: u64,
        /// Received, if it stalls.
        stalled: u64,
    },
    /// The process cannot go on.
    Failed {
        /// Why.
        error: String,
    },
}

/// From the coordinator to an endpoint process (`--agent`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToEndpoint {
    /// Open the endpoint and run it.
    Start {
        /// A producer holds its close until `close_producers` (something is to be killed
        /// while every job is still in progress).
        hold_close: bool,
    },
    /// A stalled consumer may read now.
    Release,
    /// A producer holding its close may close now.
    CloseProducers,
    /// The run is over: exit.
    Exit,
}

/// What a line reader delivers.
#[derive(Debug)]
pub enum Line<T> {
    /// A well-formed message.
    Message(T),
    /// A line that is not a message, with the reason.
    Garbled(String),
    /// The stream ended (or broke); nothing follows.
    Closed,
}

/// Writes `msg` as one JSON line and flushes.
pub fn write_line<T: Serialize>(out: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    text.push(b'\n');
    out.write_all(&text)?;
    out.flush()
}

/// Reads JSON lines from `input` on a thread of its own, handing each to `deliver` until
/// the stream ends or `deliver` returns false.
pub fn read_lines<T, R, F>(input: R, deliver: F)
where
    T: DeserializeOwned,
    R: Read + Send + 'static,
    F: Fn(Line<T>) -> bool + Send + 'static,
{
    std::thread::spawn(move || {
        for line in BufReader::new(input).lines() {
            let Ok(line) = line else {
                break;
            };
            let item = match serde_json::from_str(&line) {
                Ok(msg) => Line::Message(msg),
                Err(e) => Line::Garbled(format!("{e}: {line:.200}")),
            };
            if !deliver(item) {
                return;
            }
        }
        deliver(Line::Closed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_tagged_lines() {
        let mut out = Vec::new();
        write_line(&mut out, &ToNode::Release).expect("write");
        let progress = FromNode::Progress {
            healthy: 7,
            stalled: 2,
        };
        write_line(&mut out, &progress).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "{\"type\":\"release\"}\n{\"type\":\"progress\",\"healthy\":7,\"stalled\":2}\n"
        );
    }

    #[test]
    fn endpoint_messages_are_tagged_lines_too() {
        let mut out = Vec::new();
        write_line(&mut out, &ToEndpoint::Start { hold_close: true }).expect("write");
        write_line(&mut out, &FromEndpoint::Opened).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "{\"type\":\"start\",\"hold_close\":true}\n{\"type\":\"opened\"}\n"
        );
        let back: FromEndpoint =
            serde_json::from_str("{\"type\":\"ready\",\"pid\":7}").expect("decode");
        assert!(matches!(back, FromEndpoint::Ready { pid: 7 }));
    }

    #[test]
    fn reader_delivers_lines_then_closed() {
        let input = b"{\"type\":\"exit\"}\nnot json\n".to_vec();
        let (tx, rx) = std::sync::mpsc::channel();
        read_lines::<ToNode, _, _>(std::io::Cursor::new(input), move |l| tx.send(l).is_ok());
        let got: Vec<Line<ToNode>> = rx.iter().collect();
        assert!(matches!(got[0], Line::Message(ToNode::Exit)));
        assert!(matches!(got[1], Line::Garbled(_)));
        assert!(matches!(got[2], Line::Closed));
        assert_eq!(got.len(), 3);
    }
}
