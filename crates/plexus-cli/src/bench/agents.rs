//! The agents of `plexus bench --agent`: one `plexus agent` process per node (this same
//! executable), node i listening on `127.0.0.(i+1)` (`--first-ip` moves the range) on one
//! TCP port shared by every node, each from a configuration file the bench writes, with its
//! Unix socket beside it, in a temporary directory the bench creates (owner-only) for the
//! run. This module owns that directory, the files, and the agents' lives: starting them,
//! waiting until each accepts attaches, killing one (`--kill-node`), and stopping them,
//! gathering the figures each agent writes on stdout as it stops (`--figures-on-stop`:
//! link resumes, peak buffered bytes, admission waits).
//!
//! Each configuration carries what the shape's embedded nodes would get
//! ([`Shape::node_config`]): the cluster, the largest message and the credit pool; it is
//! checked with the agent's own parser before it is written, so a file the agent would
//! refuse is the bench's error, found before anything starts. The port is one below the
//! ephemeral range that is free on every node address, so no outgoing connection takes it
//! between the check and the agents' binding it.
//!
//! Invariants: [`Agents::start`] returns only once every agent accepted an attach on its
//! socket and said it runs the expected node, or fails within its bound, naming the agent
//! and why; every agent is killed if still running and reaped, and the directory removed,
//! when [`Agents`] is dropped, on every path, errors included; an agent runs with
//! `--stop-with-stdin`, so it stops by itself should the bench vanish without killing it.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use plexus::{Node, NodeId};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use super::fleet::{Fleet, Inbound};
use super::memory;
use super::roles::wall_us;
use super::shape::Shape;
use super::wire::Line;
use super::workload::splitmix64;
use crate::agent::config::AgentConfig;
use crate::agent::StopFigures;

/// The lowest port tried for the agents.
const FIRST_PORT: u16 = 10_000;

/// Ports tried before giving up.
const PORT_ATTEMPTS: usize = 64;

/// Pause between two rounds of attach attempts while the agents start.
const ATTACH_RETRY: Duration = Duration::from_millis(20);

/// The running agents of one run, and their directory; see the module docs.
pub struct Agents {
    /// The agent processes, indexed by node. Dropped (killed) before the directory.
    fleet: Fleet,
    /// Each node's socket.
    sockets: Vec<PathBuf>,
    /// What the agents write on stdout: their figures, as they stop.
    figures: mpsc::UnboundedReceiver<Inbound<StopFigures>>,
    /// The directory of the configurations and sockets, if the bench made it.
    dir: Option<TempDir>,
    /// Agents started by someone else (`--cluster`): their process ids, by node.
    external: Option<Vec<u32>>,
}

impl Agents {
    /// Writes the configurations of `shape`'s nodes, starts an agent of `exe` for each,
    /// and waits, at most `bound`, until every one accepts attaches.
    pub async fn start(exe: &Path, shape: &Shape, bound: Duration) -> Result<Agents, String> {
        let deadline = Instant::now() + bound;
        let dir = TempDir::create()?;
        let port = free_port(&shape.node_ips())?;
        let (figures_tx, figures) = mpsc::unbounded_channel();
        let mut agents = Agents {
            fleet: Fleet::new("agent"),
            sockets: Vec::new(),
            figures,
            dir: None,
            external: None,
        };
        for i in 0..shape.nodes() {
            let socket = dir.path().join(format!("node{i}.sock"));
            let file = dir.path().join(format!("node{i}.toml"));
            let text = config_text(shape, i, port, &socket)?;
            AgentConfig::parse(&file, &text, |path| {
                plexus::read_secret_file(path).map_err(|e| e.to_string())
            })
            .map_err(|e| format!("the bench wrote a configuration the agent would refuse: {e}"))?;
            std::fs::write(&file, text)
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            let args = [
                OsStr::new("agent"),
                OsStr::new("--stop-with-stdin"),
                OsStr::new("--figures-on-stop"),
                OsStr::new("--config"),
                file.as_os_str(),
            ];
            agents.fleet.start(exe, &args, Some(&figures_tx))?;
            agents.sockets.push(socket);
        }
        agents.dir = Some(dir);
        agents.await_attaches(deadline, bound).await?;
        Ok(agents)
    }

    /// The agents already running for `shape`'s nodes, configured by `dir/node<i>.toml`
    /// (and their process ids in `dir/node<i>.pid`), as `scripts/netns-cluster.sh` starts
    /// them; waits, at most `bound`, until every one accepts attaches. Their limits must
    /// suit the shape.
    pub async fn existing(dir: &Path, shape: &Shape, bound: Duration) -> Result<Agents, String> {
        let deadline = Instant::now() + bound;
        let mut sockets = Vec::new();
        let mut pids = Vec::new();
        for i in 0..shape.nodes() {
            let file = dir.join(format!("node{i}.toml"));
            let config = AgentConfig::load(&file).map_err(|e| e.to_string())?;
            let wanted = shape.node_config(i);
            if config.core.node != NodeId(i) || config.listen.ip() != shape.node_ip(i) {
                return Err(format!(
                    "{}: node {} on {}, but the run expects node {i} on {}",
                    file.display(),
                    config.core.node,
                    config.listen.ip(),
                    shape.node_ip(i)
                ));
            }
            if config.core.max_message < wanted.max_message
                || config.core.credit_pool != wanted.credit_pool
            {
                return Err(format!(
                    "{}: max_message {} and credit_pool {}, but the run needs max_message ≥ {} and credit_pool {} (--credit-pool)",
                    file.display(),
                    config.core.max_message,
                    config.core.credit_pool,
                    wanted.max_message,
                    wanted.credit_pool
                ));
            }
            sockets.push(config.socket.ok_or(format!(
                "{}: the agent serves no local socket",
                file.display()
            ))?);
            let pid_file = dir.join(format!("node{i}.pid"));
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                .ok_or(format!("{}: no process id", pid_file.display()))?;
            pids.push(pid);
        }
        // No sender: the figures of agents that are not ours never come.
        let (_, figures) = mpsc::unbounded_channel();
        let mut agents = Agents {
            fleet: Fleet::new("agent"),
            sockets,
            figures,
            dir: None,
            external: Some(pids),
        };
        agents.await_attaches(deadline, bound).await?;
        Ok(agents)
    }

    /// The socket tables of the agents' network namespaces, if they are not this
    /// process's (`--cluster`).
    pub fn socket_tables(&self) -> Option<Vec<PathBuf>> {
        self.external.as_ref().map(|pids| {
            pids.iter()
                .map(|pid| PathBuf::from(format!("/proc/{pid}/net")))
                .collect()
        })
    }

    /// Waits until every agent accepts an attach and runs its node, or one exits, or the
    /// deadline passes.
    async fn await_attaches(&mut self, deadline: Instant, bound: Duration) -> Result<(), String> {
        let mut pending: Vec<u32> = (0..self.sockets.len() as u32).collect();
        loop {
            if let Some((node, status)) = self.exited().into_iter().next() {
                return Err(format!(
                    "the agent of node {node} (pid {}) exited ({status}) before accepting attaches on {}; its message is above",
                    self.pid(node),
                    self.socket(node).display()
                ));
            }
            let mut still = Vec::new();
            for node in pending {
                match timeout_at(deadline, Node::attach(self.socket(node))).await {
                    Ok(Ok(attached)) if attached.id() == NodeId(node) => {}
                    Ok(Ok(attached)) => {
                        return Err(format!(
                            "the agent on {} runs {}, not node {node}",
                            self.socket(node).display(),
                            attached.id()
                        ))
                    }
                    Ok(Err(_)) | Err(_) => still.push(node),
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the agents of nodes {pending:?} did not accept attaches within {bound:?} (sockets: {})",
                    self.socket(pending[0]).display()
                ));
            }
            tokio::time::sleep(ATTACH_RETRY).await;
        }
    }

    /// Where processes attach to node `node`'s agent.
    pub fn socket(&self, node: u32) -> &Path {
        self.sockets
            .get(node as usize)
            .map_or(Path::new(""), PathBuf::as_path)
    }

    /// Node `node`'s agent's process id.
    pub fn pid(&self, node: u32) -> u32 {
        match &self.external {
            Some(pids) => pids.get(node as usize).copied().unwrap_or(0),
            None => self.fleet.pid(node as usize),
        }
    }

    /// SIGKILLs node `node`'s agent and reaps it.
    pub fn kill(&mut self, node: u32) -> Result<(), String> {
        self.fleet.kill(node as usize)
    }

    /// Agents of someone else's that are gone (`--cluster`), by node.
    pub fn external_gone(&self) -> Vec<u32> {
        let Some(pids) = &self.external else {
            return Vec::new();
        };
        (0..pids.len() as u32)
            .filter(|&node| !Path::new(&format!("/proc/{}", self.pid(node))).exists())
            .collect()
    }

    /// Agents that exited since the last call, by node, with how.
    pub fn exited(&mut self) -> Vec<(u32, ExitStatus)> {
        self.fleet
            .exited()
            .into_iter()
            .map(|(i, status)| (i as u32, status))
            .collect()
    }

    /// Each agent's peak resident memory, by node; `None` for one that is gone (or whose
    /// figure the OS does not tell).
    pub fn peak_rss(&self) -> Vec<Option<u64>> {
        (0..self.sockets.len() as u32)
            .map(|node| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", self.pid(node))).ok()?;
                memory::status_field_bytes(&status, "VmHWM")
            })
            .collect()
    }

    /// Tells every agent to stop (closing its stdin makes it shut its node down cleanly)
    /// and gathers the figures each writes as it stops, by node, waiting at most `grace`;
    /// `None` for an agent that is gone (the killed one) or stays silent.
    pub async fn stop_with_figures(&mut self, grace: Duration) -> Vec<Option<StopFigures>> {
        self.fleet.close_inputs();
        let deadline = Instant::now() + grace;
        let mut figures = vec![None; self.sockets.len()];
        let mut heard = vec![false; self.sockets.len()];
        while heard.contains(&false) {
            let Ok(Some((node, line))) = timeout_at(deadline, self.figures.recv()).await else {
                break;
            };
            let Some(heard) = heard.get_mut(node) else {
                continue;
            };
            match line {
                Line::Message(f) => {
                    if let Some(slot) = figures.get_mut(node) {
                        *slot = Some(f);
                    }
                    *heard = true;
                }
                Line::Closed => *heard = true,
                Line::Garbled(e) => {
                    tracing::warn!(node, error = %e, "an agent wrote something unreadable")
                }
            }
        }
        figures
    }

    /// Stops every agent: closes its stdin, which makes it shut its node down cleanly,
    /// waits up to `grace`, then kills the rest.
    pub fn stop(mut self, grace: Duration) {
        self.fleet.shut_down(grace);
    }
}

/// The configuration file of node `i` of `shape`, listening on `port`, attached to at
/// `socket`.
fn config_text(shape: &Shape, i: u32, port: u16, socket: &Path) -> Result<String, String> {
    let core = shape.node_config(i);
    let members: Vec<String> = (0..shape.nodes())
        .map(|m| {
            format!(
                "  {{ id = {m}, address = \"{}:{port}\" }},",
                shape.node_ip(m)
            )
        })
        .collect();
    // A TOML basic string: JSON's escapes are TOML's.
    let socket = socket
        .to_str()
        .ok_or(format!("the socket path {} is not UTF-8", socket.display()))?;
    let socket =
        serde_json::to_string(socket).map_err(|e| format!("cannot quote {socket}: {e}"))?;
    let secret = shape
        .secret_file()
        .ok_or("the run has no secret file for its agents")?;
    let secret = serde_json::to_string(&secret.to_string_lossy())
        .map_err(|e| format!("cannot quote {}: {e}", secret.display()))?;
    let tls = match shape.tls_dir() {
        None => String::new(),
        Some(dir) => {
            let [cert, key, ca] = super::certs::files(dir, i);
            let quote = |p: &Path| {
                serde_json::to_string(&p.to_string_lossy())
                    .map_err(|e| format!("cannot quote {}: {e}", p.display()))
            };
            format!(
                "\n[tls]\ncert = {}\nkey = {}\nca = {}\n",
                quote(&cert)?,
                quote(&key)?,
                quote(&ca)?
            )
        }
    };
    Ok(format!(
        "# Node {i} of a `plexus bench --agent` run, written by the bench, removed with its directory.\n\
         node = {i}\n\
         cluster = {}\n\
         secret_file = {secret}\n\
         listen = \"{}:{port}\"\n\
         members = [\n{}\n]\n\
         socket = {socket}\n\
         transport = \"{}\"\n\
         \n\
         [limits]\n\
         max_message = \"{}B\"\n\
         credit_pool = \"{}B\"\n{tls}",
        core.cluster,
        shape.node_ip(i),
        members.join("\n"),
        match shape.transport() {
            plexus::Transport::Tcp => "tcp",
            plexus::Transport::Quic => "quic",
        },
        core.max_message,
        core.credit_pool
    ))
}

/// A TCP port below the ephemeral range that is free on every one of `ips`.
fn free_port(ips: &[Ipv4Addr]) -> Result<u16, String> {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = u64::from(ephemeral.saturating_sub(FIRST_PORT).max(1));
    let mut seed = wall_us() ^ u64::from(std::process::id()).rotate_left(24);
    let mut last = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port =
            FIRST_PORT.saturating_add(u16::try_from(splitmix64(&mut seed) % span).unwrap_or(0));
        let held: Result<Vec<TcpListener>, String> = ips
            .iter()
            .map(|&ip| TcpListener::bind((ip, port)).map_err(|e| format!("{ip}:{port}: {e}")))
            .collect();
        match held {
            Ok(_) => return Ok(port),
            Err(e) => last = e,
        }
    }
    Err(format!(
        "found no TCP port free on every node address ({} from {}) in {PORT_ATTEMPTS} tries; the last: {last}",
        ips.len(),
        ips.first().map_or("-".to_string(), Ipv4Addr::to_string)
    ))
}

/// A directory of this run, owner-only, removed (with what it holds) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `plexus-bench-<pid>-<n>` in the system's temporary directory.
    pub fn create() -> Result<TempDir, String> {
        let base = std::env::temp_dir();
        let mut n = wall_us();
        loop {
            let path = base.join(format!("plexus-bench-{}-{n:x}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => {
                    return Err(format!(
                        "cannot create a directory for the local sockets in {}: {e}",
                        base.display()
                    ))
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::shape::tests::spec;
    use super::*;

    #[test]
    fn the_configuration_is_one_the_agent_accepts_with_the_shapes_settings() {
        let dir = TempDir::create().expect("created");
        let secret = dir.path().join("cluster.secret");
        plexus::write_new_secret_file(&secret).expect("written");
        let mut spec = spec(3, None, 1);
        spec.secret_file = Some(secret);
        let shape = Shape::new(spec).expect("valid");
        let socket = Path::new("/tmp/dir with \"quotes\"/node1.sock");
        let text = config_text(&shape, 1, 12345, socket).expect("text");
        let config = AgentConfig::parse(Path::new("node1.toml"), &text, |path| {
            assert_eq!(Some(path), shape.secret_file());
            Ok(plexus::Secret::new(*b"a secret for tests").expect("long enough"))
        })
        .expect("valid");
        let core = shape.node_config(1);
        assert_eq!(config.core.node, NodeId(1));
        assert_eq!(config.core.cluster, core.cluster);
        assert_eq!(config.core.max_message, core.max_message);
        assert_eq!(config.core.credit_pool, core.credit_pool);
        assert_eq!(config.listen, "127.0.0.2:12345".parse().expect("addr"));
        assert_eq!(config.members.len(), 3);
        assert_eq!(config.socket.as_deref(), Some(socket));
    }

    #[test]
    fn the_directory_goes_with_its_contents() {
        let dir = TempDir::create().expect("created");
        let path = dir.path().to_owned();
        std::fs::write(path.join("f"), "x").expect("write");
        drop(dir);
        assert!(!path.exists());
    }
}
