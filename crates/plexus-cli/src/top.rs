//! `plexus top`: a live terminal view of a running agent's node, over its local socket:
//! its links (state, bytes per second each way, resumes, round trip), its jobs (endpoints,
//! admission, bytes per second each way) and buffers, and the
//! channels starved of credit, longest wait first, naming the consumer that holds them.
//! `q` or Esc quits.
//!
//! The view is drawn from two snapshots ([`plexus::Status`]) a refresh apart: rates are
//! the difference of the byte counters over the time between them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;

/// Options of `plexus top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The agent's configuration file: its socket is read from it.
    #[arg(long, conflicts_with = "socket", required_unless_present = "socket")]
    config: Option<PathBuf>,
    /// The agent's socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Milliseconds between refreshes.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

/// What one screen shows: the latest snapshot and the rates since the one before.
pub struct View {
    status: plexus::Status,
    /// Per peer: bytes per second sent and received since the previous snapshot.
    rates: Vec<(u32, f64, f64)>,
    /// Per job: the same.
    job_rates: Vec<(u64, f64, f64)>,
}

impl View {
    /// The view of `status`, with rates against `previous` taken `elapsed` before.
    pub fn new(
        status: plexus::Status,
        previous: Option<&plexus::Status>,
        elapsed: Duration,
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-3);
        // Bytes each way now, less those of the previous snapshot, per second.
        let per_second = |now: (u64, u64), before: Option<(u64, u64)>| {
            let (sent, received) = before.unwrap_or((0, 0));
            (
                now.0.saturating_sub(sent) as f64 / secs,
                now.1.saturating_sub(received) as f64 / secs,
            )
        };
        let rates = status
            .links
            .iter()
            .map(|l| {
                let before = previous
                    .and_then(|p| p.links.iter().find(|b| b.peer == l.peer))
                    .map(|b| (b.bytes_sent, b.bytes_received));
                let (out, inn) = per_second((l.bytes_sent, l.bytes_received), before);
                (l.peer, out, inn)
            })
            .collect();
        let job_rates = status
            .jobs
            .iter()
            .map(|j| {
                let before = previous
                    .and_then(|p| p.jobs.iter().find(|b| b.job == j.job))
                    .map(|b| (b.bytes_sent, b.bytes_received));
                let (out, inn) = per_second((j.bytes_sent, j.bytes_received), before);
                (j.job, out, inn)
            })
            .collect();
        View {
            status,
            rates,
            job_rates,
        }
    }
}

/// `n` bytes per second, readably.
fn rate(n: f64) -> String {
    const UNITS: [&str; 4] = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Draws `view` into `frame`.
pub fn draw(frame: &mut Frame, view: &View) {
    let s = &view.status;
    let [head, links, jobs, starving] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length((s.links.len() as u16).saturating_add(3).min(20)),
        Constraint::Length((s.jobs.len() as u16).saturating_add(3).min(12)),
        Constraint::Min(4),
    ])
    .areas(frame.area());
    let budget = s
        .memory_budget
        .map_or(String::new(), |b| format!(" of {b}"));
    let summary = format!(
        "node {}   jobs {}   waiting for admission {}   buffered {} B{budget}   processes attached {}",
        s.node, s.jobs_active, s.admission_waiting, s.buffered_bytes, s.attached_processes
    );
    frame.render_widget(
        Paragraph::new(Line::from(summary))
            .block(Block::default().borders(Borders::ALL).title(" plexus top ")),
        head,
    );
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let link_rows = s.links.iter().map(|l| {
        let (_, out, inn) = view
            .rates
            .iter()
            .find(|(peer, ..)| *peer == l.peer)
            .copied()
            .unwrap_or((l.peer, 0.0, 0.0));
        Row::new(vec![
            format!("{}", l.peer),
            if l.up { "up".into() } else { "down".into() },
            rate(out),
            rate(inn),
            format!("{}", l.resumes),
            l.rtt_us.map_or("-".to_string(), |us| {
                format!("{:.2} ms", us as f64 / 1000.0)
            }),
        ])
    });
    frame.render_widget(
        Table::new(
            link_rows,
            [
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(14),
                Constraint::Length(14),
                Constraint::Length(8),
                Constraint::Length(10),
            ],
        )
        .header(Row::new(vec!["peer", "link", "sent", "received", "resumes", "rtt"]).style(bold))
        .block(Block::default().borders(Borders::ALL).title(" links ")),
        links,
    );
    let job_rows = s.jobs.iter().map(|j| {
        let (_, out, inn) = view
            .job_rates
            .iter()
            .find(|(job, ..)| *job == j.job)
            .copied()
            .unwrap_or((j.job, 0.0, 0.0));
        Row::new(vec![
            format!("{}", j.job),
            format!("{}", j.producers),
            format!("{}", j.consumers),
            j.admission.clone(),
            rate(out),
            rate(inn),
        ])
    });
    frame.render_widget(
        Table::new(
            job_rows,
            [
                Constraint::Length(20),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(14),
                Constraint::Length(14),
                Constraint::Length(14),
            ],
        )
        .header(
            Row::new(vec![
                "job",
                "producers",
                "consumers",
                "admission",
                "sent",
                "received",
            ])
            .style(bold),
        )
        .block(Block::default().borders(Borders::ALL).title(" jobs ")),
        jobs,
    );
    let starving_rows: Vec<Row> = s
        .starving
        .iter()
        .map(|by| Row::new(vec![by.describe()]))
        .collect();
    let title = if starving_rows.is_empty() {
        " channels starved of credit: none "
    } else {
        " channels starved of credit, longest wait first "
    };
    frame.render_widget(
        Table::new(starving_rows, [Constraint::Percentage(100)])
            .block(Block::default().borders(Borders::ALL).title(title)),
        starving,
    );
}

/// Runs the view until `q` or Esc.
pub fn main(args: TopArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plexus top: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &TopArgs) -> Result<(), String> {
    let socket = crate::status::socket_of(args.config.as_deref(), args.socket.as_deref())?;
    let interval = Duration::from_millis(args.interval_ms.max(50));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let node = runtime
        .block_on(plexus::Node::attach(&socket))
        .map_err(|e| e.to_string())?;
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot use the terminal: {e}"))?;
    let outcome = (|| {
        let mut previous: Option<(plexus::Status, Instant)> = None;
        loop {
            // The timer is made inside the runtime, which it needs.
            let status = runtime
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), node.status()).await
                })
                .map_err(|_| "the agent did not answer within 10 s".to_string())?
                .map_err(|e| e.to_string())?;
            let now = Instant::now();
            let view = View::new(
                status.clone(),
                previous.as_ref().map(|(s, _)| s),
                previous.as_ref().map_or(interval, |(_, at)| now - *at),
            );
            terminal
                .draw(|frame| draw(frame, &view))
                .map_err(|e| e.to_string())?;
            previous = Some((status, now));
            if event::poll(interval).map_err(|e| e.to_string())? {
                if let Event::Key(key) = event::read().map_err(|e| e.to_string())? {
                    if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    outcome
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use plexus::{
        AttachPolicy, Config, Endpoint, JobId, Membership, Node, NodeId, Topology, TrySend,
    };
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::*;

    /// Two nodes serving their local sockets (the agents' code), a producer attached to
    /// node 0 and a consumer attached to node 1 that reads nothing: the view drawn from
    /// node 0's status shows the consumer starving the producer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_view_names_the_consumer_that_starves_a_producer() {
        let secret = plexus::Secret::new(*b"a secret for the view's test").expect("long enough");
        let membership = Membership::new();
        let mut nodes = Vec::new();
        let mut sockets = Vec::new();
        for i in 0..2u32 {
            let mut config = Config::new(NodeId(i), 3, secret.clone());
            config.max_message = 64 * 1024;
            config.credit_pool = 256 * 1024;
            let node = Node::builder()
                .config(config)
                .listen(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(127, 0, 113, i as u8 + 1)),
                    0,
                ))
                .membership(membership.clone())
                .start()
                .await
                .expect("node");
            let socket =
                std::env::temp_dir().join(format!("plexus-top-{}-{i}.sock", std::process::id()));
            node.serve_local(&socket, AttachPolicy::owner_only().expect("uid"))
                .expect("serve");
            nodes.push(node);
            sockets.push(socket);
        }
        let (p, c) = (Endpoint::new(NodeId(0), 4), Endpoint::new(NodeId(1), 1));
        let topology = Topology::new([p], [c]);
        let sender = Node::attach(&sockets[0]).await.expect("attach");
        let receiver = Node::attach(&sockets[1]).await.expect("attach");
        let _rx = receiver
            .job(JobId(9), topology.clone())
            .consumer(1)
            .await
            .expect("consumer");
        let mut tx = sender
            .job(JobId(9), topology)
            .producer(4)
            .await
            .expect("producer");
        // Until the pool is full: the consumer reads nothing, so refusals go on (a refusal
        // alone may only mean that credit has not come yet).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut refused_since: Option<Instant> = None;
        while refused_since.is_none_or(|since| since.elapsed() < Duration::from_millis(300)) {
            match tx.try_send(c, bytes::Bytes::from(vec![1u8; 8192])) {
                Ok(()) => refused_since = None,
                Err(TrySend::NoCredit(_)) => {
                    refused_since.get_or_insert_with(Instant::now);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "the pool never filled");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = sender.status().await.expect("status");
        let view = View::new(status, None, Duration::from_secs(1));
        let mut terminal = Terminal::new(TestBackend::new(110, 22)).expect("terminal");
        terminal.draw(|f| draw(f, &view)).expect("drawn");
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|cell| cell.symbol())
            .collect();
        assert!(
            screen.contains("job 9: consumer 1/1 keeps 1 producer here waiting"),
            "{screen}"
        );
        assert!(screen.contains("channels starved of credit, longest wait first"));
        assert!(screen.contains("up"), "the link to node 1 is shown up");
        assert!(
            screen.contains("admitted"),
            "job 9's admission is shown: {screen}"
        );
        for socket in sockets {
            std::fs::remove_file(socket).ok();
        }
    }

    #[test]
    fn rates_are_readable() {
        assert_eq!(rate(0.0), "0.0 B/s");
        assert_eq!(rate(2048.0), "2.0 KiB/s");
        assert_eq!(rate(3.5 * 1024.0 * 1024.0 * 1024.0), "3.5 GiB/s");
    }
}
