//! The agent's configuration file: what it says, and its checks.
//!
//! The file is TOML (a commented sample is `deploy/plexus.toml`). Reading it yields an
//! [`AgentConfig`] that is known to work: every field parsed, the node one of the members
//! and listening where the members list says, ids unique, sizes and limits that the
//! protocol core accepts together. Anything else is a [`ConfigError`] that names the file,
//! the field and the reason, so an operator can fix it without reading code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus::{Config, NodeId};
use serde::Deserialize;

use crate::bench::size::parse_size;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    node: u32,
    cluster: u64,
    secret_file: PathBuf,
    listen: String,
    members: Vec<Member>,
    socket: Option<PathBuf>,
    metrics: Option<String>,
    #[serde(default)]
    access: Access,
    #[serde(default)]
    limits: Limits,
    tls: Option<TlsFiles>,
    transport: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Access {
    users: Option<Vec<u32>>,
    group: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    id: u32,
    address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_message: Option<String>,
    credit_pool: Option<String>,
    memory_budget: Option<String>,
    admission_timeout_s: Option<u64>,
    grace_period_s: Option<u64>,
    link_idle_close_s: Option<u64>,
}

/// A configuration that the agent can run with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The protocol core's settings (node, cluster, limits).
    pub core: Config,
    /// Where the node listens.
    pub listen: SocketAddr,
    /// Every member's address, by node.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// Where local processes attach, if they may.
    pub socket: Option<PathBuf>,
    /// User ids allowed to attach (empty: the agent's own user).
    pub users: Vec<u32>,
    /// A group whose members may attach too.
    pub group: Option<u32>,
    /// The node's TLS identity, if its links use TLS.
    pub tls: Option<plexus::TlsIdentity>,
    /// What its links run over (`transport = "tcp" | "quic"`; QUIC needs `[tls]`).
    pub transport: plexus::Transport,
    /// Where `GET /metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read it: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration (a missing, unknown or mistyped
    /// field); the parser's message names it.
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message, with the field and its place.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("{file}: field `{field}`: {reason}")]
    Field {
        /// The file.
        file: PathBuf,
        /// The field, as written in the file.
        field: String,
        /// Why.
        reason: String,
    },
}

impl AgentConfig {
    /// Reads and checks `file`, and the secret file it names.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(file, &text, |path| {
            plexus::read_secret_file(path).map_err(|e| e.to_string())
        })
    }

    /// Checks the text of `file`; `read_secret` reads the secret file it names (a path
    /// relative to the directory of `file`).
    pub fn parse(
        file: &Path,
        text: &str,
        read_secret: impl FnOnce(&Path) -> Result<plexus::Secret, String>,
    ) -> Result<Self, ConfigError> {
        let raw: File = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let field = |field: &str, reason: String| ConfigError::Field {
            file: file.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let listen: SocketAddr = raw
            .listen
            .parse()
            .map_err(|e| field("listen", format!("`{}`: {e}", raw.listen)))?;
        let mut members = BTreeMap::new();
        for (i, m) in raw.members.iter().enumerate() {
            let address: SocketAddr = m.address.parse().map_err(|e| {
                field(
                    &format!("members[{i}].address"),
                    format!("`{}`: {e}", m.address),
                )
            })?;
            if members.insert(NodeId(m.id), address).is_some() {
                return Err(field(
                    &format!("members[{i}].id"),
                    format!("node {} is listed twice", m.id),
                ));
            }
        }
        let node = NodeId(raw.node);
        match members.get(&node) {
            None => {
                return Err(field(
                    "node",
                    format!("node {} is not one of the members", raw.node),
                ))
            }
            Some(addr) if *addr != listen => {
                return Err(field(
                    "listen",
                    format!(
                        "{listen} is not where the members list says node {} listens ({addr})",
                        raw.node
                    ),
                ))
            }
            Some(_) => {}
        }
        let beside = |path: &Path| file.parent().unwrap_or(Path::new(".")).join(path);
        let secret_path = beside(&raw.secret_file);
        let secret = read_secret(&secret_path).map_err(|e| field("secret_file", e))?;
        let mut core = Config::new(node, raw.cluster, secret);
        let size = |name: &str, value: &Option<String>| -> Result<Option<u64>, ConfigError> {
            value
                .as_deref()
                .map(|v| parse_size(v).map_err(|e| field(&format!("limits.{name}"), e.to_string())))
                .transpose()
        };
        if let Some(max) = size("max_message", &raw.limits.max_message)? {
            core.max_message = u32::try_from(max)
                .map_err(|_| field("limits.max_message", format!("{max} bytes is out of range")))?;
        }
        if let Some(pool) = size("credit_pool", &raw.limits.credit_pool)? {
            core.credit_pool = pool;
            core.max_grant = core.max_grant.min(pool);
        }
        core.memory_budget = size("memory_budget", &raw.limits.memory_budget)?;
        if let Some(s) = raw.limits.admission_timeout_s {
            core.admission_timeout = Duration::from_secs(s);
        }
        if let Some(s) = raw.limits.grace_period_s {
            core.grace_period = Duration::from_secs(s);
        }
        if let Some(s) = raw.limits.link_idle_close_s {
            core.link_idle_close = (s > 0).then(|| Duration::from_secs(s));
        }
        core.validate()
            .map_err(|e| field(field_of(&e), e.to_string()))?;
        if let Some(socket) = &raw.socket {
            if socket.as_os_str().is_empty() {
                return Err(field("socket", "an empty path".into()));
            }
        }
        let metrics = raw
            .metrics
            .as_deref()
            .map(|m| {
                m.parse::<SocketAddr>()
                    .map_err(|e| field("metrics", format!("`{m}`: {e}")))
            })
            .transpose()?;
        let tls = raw
            .tls
            .map(|t| {
                plexus::TlsIdentity::from_pem_files(
                    &beside(&t.cert),
                    &beside(&t.key),
                    &beside(&t.ca),
                )
                .map_err(|e| field("tls", e.to_string()))
            })
            .transpose()?;
        let transport = match raw.transport.as_deref() {
            None | Some("tcp") => plexus::Transport::Tcp,
            Some("quic") if tls.is_some() => plexus::Transport::Quic,
            Some("quic") => {
                return Err(field(
                    "transport",
                    "\"quic\" needs a [tls] section: QUIC links are TLS 1.3".into(),
                ))
            }
            Some(other) => {
                return Err(field(
                    "transport",
                    format!("\"{other}\": it is \"tcp\" or \"quic\""),
                ))
            }
        };
        Ok(Self {
            core,
            listen,
            members,
            socket: raw.socket,
            users: raw.access.users.unwrap_or_default(),
            group: raw.access.group,
            tls,
            transport,
            metrics,
        })
    }
}

/// The field of the file a core configuration error is about.
fn field_of(e: &plexus::ConfigError) -> &'static str {
    match e {
        plexus::ConfigError::PoolTooSmall { .. } => "limits.credit_pool",
        plexus::ConfigError::BudgetTooSmall { .. } => "limits.memory_budget",
        plexus::ConfigError::MessageSize(_) => "limits.max_message",
        plexus::ConfigError::ZeroIncarnation | plexus::ConfigError::NoDials => "limits",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("conf/test.toml"), text, |_| {
            plexus::Secret::new(*b"a secret for tests").map_err(|e| e.to_string())
        })
    }

    const GOOD: &str = r#"
        node = 1
        cluster = 7
        secret_file = "cluster.secret"
        listen = "127.0.0.2:7100"
        members = [
            { id = 0, address = "127.0.0.1:7100" },
            { id = 1, address = "127.0.0.2:7100" },
        ]
        [limits]
        credit_pool = "2MiB"
        memory_budget = "64MiB"
    "#;

    #[test]
    fn quic_needs_tls_and_transports_are_named() {
        assert_eq!(
            parse(GOOD).expect("valid").transport,
            plexus::Transport::Tcp
        );
        let with = |line: &str| GOOD.replacen("node = 1", &format!("{line}\nnode = 1"), 1);
        let err = parse(&with(r#"transport = "quic""#))
            .expect_err("no [tls]")
            .to_string();
        assert!(
            err.contains("`transport`") && err.contains("[tls]"),
            "{err}"
        );
        let err = parse(&with(r#"transport = "pigeon""#))
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("\"tcp\" or \"quic\""), "{err}");
    }

    #[test]
    fn a_relative_secret_file_is_beside_the_configuration() {
        let mut asked = None;
        AgentConfig::parse(Path::new("conf/test.toml"), GOOD, |path| {
            asked = Some(path.to_owned());
            plexus::Secret::new(*b"a secret for tests").map_err(|e| e.to_string())
        })
        .expect("valid");
        assert_eq!(asked.as_deref(), Some(Path::new("conf/cluster.secret")));
    }

    #[test]
    fn a_secret_that_cannot_be_read_names_the_field() {
        let err = AgentConfig::parse(Path::new("test.toml"), GOOD, |_| {
            Err("may be read by other users".into())
        })
        .expect_err("refused")
        .to_string();
        assert!(err.contains("`secret_file`: may be read"), "{err}");
    }

    #[test]
    fn the_sample_file_is_valid() {
        let sample = include_str!("../../../../deploy/plexus.toml");
        let config = parse(sample).expect("the sample configuration is valid");
        assert_eq!(config.members.len(), 2);
        assert_eq!(config.core.memory_budget, Some(1 << 30));
        assert!(config.socket.is_some());
    }

    #[test]
    fn a_good_file_gives_the_core_its_settings() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.core.node, NodeId(1));
        assert_eq!(config.core.credit_pool, 2 << 20);
        assert_eq!(config.core.memory_budget, Some(64 << 20));
        assert_eq!(config.listen, "127.0.0.2:7100".parse().unwrap());
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases = [
            (GOOD.replace("node = 1", "node = 5"), "`node`"),
            (
                GOOD.replace("\"127.0.0.2:7100\"\n", "\"127.0.0.9:7100\"\n"),
                "`listen`",
            ),
            (GOOD.replace("2MiB", "12 bananas"), "`limits.credit_pool`"),
            (GOOD.replace("2MiB", "100B"), "`limits.credit_pool`"),
            (GOOD.replace("{ id = 0,", "{ id = 1,"), "`members[1].id`"),
            (
                GOOD.replace("cluster = 7", "cluster = \"seven\""),
                "cluster",
            ),
            (GOOD.replace("[limits]", "[limits]\nbogus = 1"), "bogus"),
            (
                GOOD.replace("\"127.0.0.1:7100\"", "\"nowhere\""),
                "`members[0].address`",
            ),
            (
                GOOD.replace("[limits]", "metrics = \"port 9\"\n[limits]"),
                "`metrics`",
            ),
        ];
        for (text, named) in cases {
            let err = parse(&text).expect_err(named).to_string();
            assert!(err.starts_with("conf/test.toml: "), "{err}");
            assert!(err.contains(named), "{named} not in: {err}");
        }
    }
}
