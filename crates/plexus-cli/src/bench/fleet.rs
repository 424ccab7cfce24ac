//! Child processes the bench starts and must never leave behind: the node processes of
//! `--spawn`, the agents and the endpoint processes of `--agent`. Each child's stdin is a
//! pipe from this process (closing it tells the child to stop); a child that talks to
//! the coordinator has its stdout read as JSON lines ([`super::wire`]) on a thread of its
//! own, delivered tagged with its index; a silent one has its stdout discarded, so that
//! the bench's own stdout carries nothing but its report. Every child logs on stderr, the
//! bench's.
//!
//! Invariants: every child is killed if still running and reaped (waited for) before its
//! [`Fleet`] is dropped, on every path, errors included; a child is reaped once; a child
//! that cannot be written to is left alone (its output, or its exit, tells what happened
//! to it).

use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use super::wire::{self, Line};

/// A line from child `.0`.
pub type Inbound<T> = (usize, Line<T>);

/// One child.
struct Process {
    child: Child,
    /// `None` once closed (or found broken).
    stdin: Option<ChildStdin>,
    /// The child was waited for.
    reaped: bool,
}

/// Children of one kind, in the order they were started; see the module docs.
pub struct Fleet {
    /// What a child is, for messages ("node process", "agent", ...).
    what: &'static str,
    procs: Vec<Process>,
}

impl Fleet {
    /// No child yet; `what` names a child in messages.
    pub fn new(what: &'static str) -> Fleet {
        Fleet {
            what,
            procs: Vec::new(),
        }
    }

    /// Starts `exe` with `args` as the next child and returns its index; with an `inbox`,
    /// its stdout lines go there, tagged with that index.
    pub fn start<T, A>(
        &mut self,
        exe: &Path,
        args: &[A],
        inbox: Option<&mpsc::UnboundedSender<Inbound<T>>>,
    ) -> Result<usize, String>
    where
        T: DeserializeOwned + Send + 'static,
        A: AsRef<std::ffi::OsStr>,
    {
        let index = self.procs.len();
        let stdout = if inbox.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {} {index}: {e}", self.what))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        self.procs.push(Process {
            child,
            stdin,
            reaped: false,
        });
        if let Some(inbox) = inbox {
            let stdout = stdout.ok_or(format!("{} {index} has no stdout pipe", self.what))?;
            let tx = inbox.clone();
            wire::read_lines(stdout, move |line| tx.send((index, line)).is_ok());
        }
        Ok(index)
    }

    /// The process id of child `i` (0 if there is none).
    pub fn pid(&self, i: usize) -> u32 {
        self.procs.get(i).map_or(0, |p| p.child.id())
    }

    /// Sends `msg` to child `i`.
    pub fn send<T: Serialize>(&mut self, i: usize, msg: &T) {
        let Some(p) = self.procs.get_mut(i) else {
            return;
        };
        if let Some(stdin) = p.stdin.as_mut() {
            if wire::write_line(stdin, msg).is_err() {
                p.stdin = None;
            }
        }
    }

    /// Sends `msg` to every child.
    pub fn broadcast<T: Serialize>(&mut self, msg: &T) {
        for i in 0..self.procs.len() {
            self.send(i, msg);
        }
    }

    /// SIGKILLs child `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<(), String> {
        let what = self.what;
        let p = self
            .procs
            .get_mut(i)
            .ok_or(format!("no {what} {i} to kill"))?;
        if p.reaped {
            return Err(format!("{what} {i} had already exited"));
        }
        p.child
            .kill()
            .map_err(|e| format!("cannot kill {what} {i}: {e}"))?;
        p.stdin = None;
        p.child
            .wait()
            .map_err(|e| format!("cannot reap {what} {i}: {e}"))?;
        p.reaped = true;
        Ok(())
    }

    /// Children that exited since the last call (reaping them), with how.
    pub fn exited(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut gone = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate().filter(|(_, p)| !p.reaped) {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.reaped = true;
                gone.push((i, status));
            }
        }
        gone
    }

    /// Closes every child's stdin, which tells it to stop.
    pub fn close_inputs(&mut self) {
        for p in &mut self.procs {
            p.stdin = None;
        }
    }

    /// Closes every child's stdin (which makes it exit), waits up to `grace`, then kills
    /// and reaps the rest.
    pub fn shut_down(&mut self, grace: Duration) {
        self.close_inputs();
        let deadline = std::time::Instant::now() + grace;
        loop {
            let mut running = false;
            for p in self.procs.iter_mut().filter(|p| !p.reaped) {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => p.reaped = true,
                    Ok(None) => running = true,
                }
            }
            if !running || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.reap_all();
    }

    /// Kills and waits for every child not reaped yet.
    fn reap_all(&mut self) {
        for p in self.procs.iter_mut().filter(|p| !p.reaped) {
            let _ = p.child.kill();
            let _ = p.child.wait();
            p.reaped = true;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.reap_all();
    }
}

/// What a coordinator of child processes starts from: this executable (the children run
/// it too, as `what`), the shape as the children receive it, and a runtime for the
/// coordinator's own waits.
pub fn coordinator_parts(
    shape: &super::shape::Shape,
    what: &str,
) -> Result<(std::path::PathBuf, String, tokio::runtime::Runtime), String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable to start the {what}: {e}"))?;
    let shape_json =
        serde_json::to_string(shape).map_err(|e| format!("cannot encode the shape: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    Ok((exe, shape_json, runtime))
}
