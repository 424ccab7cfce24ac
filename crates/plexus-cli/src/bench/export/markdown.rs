//! `report.md`: a bench run written for people, in Markdown tables: the verdict, the
//! command as run, the machine, the shape, and the same figures as the JSON object.
//!
//! Invariants: every figure comes from the report the JSON is made of (nothing is measured
//! here); a figure the run did not measure shows as `-`, never as a made-up zero; table
//! cells never break the table (`|` and line breaks in text are escaped); sections that
//! only apply to some runs (stalled consumers, failures, errors) appear only in those.

use std::fmt::Write;

use super::super::arrival::ArrivalOrder;
use super::super::compare::CompareReport;
use super::super::latency::{Figures, LatencyReport};
use super::super::report::{Report, ShapeFields};
use super::super::size::format_bytes;
use super::machine::Machine;

/// What every report.md says besides the figures.
pub struct Context<'a> {
    /// The command line as run.
    pub command: &'a str,
    /// The machine it ran on.
    pub machine: &'a Machine,
    /// Every file written beside report.md: name, and what it holds.
    pub files: &'a [(&'static str, String)],
    /// What the reader should know about the files (a chart that could not be drawn...).
    pub notes: &'a [String],
}

/// `text` made safe for a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// Appends a table with `header` and `rows`.
fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    out.push_str(&line(header.iter().map(|h| cell(h)).collect()));
    out.push_str(&line(vec!["---".to_string(); N]));
    for row in rows {
        out.push_str(&line(row.iter().map(|c| cell(c)).collect()));
    }
    out.push('\n');
}

/// Appends a two-column table of figures.
fn figures(out: &mut String, rows: &[(&str, String)]) {
    let rows: Vec<[String; 2]> = rows
        .iter()
        .map(|(name, value)| [name.to_string(), value.clone()])
        .collect();
    table(out, ["figure", "value"], &rows);
}

fn heading(out: &mut String, title: &str) {
    let _ = writeln!(out, "## {title}\n");
}

/// A rate of bytes.
fn rate(bytes_per_s: f64) -> String {
    format!("{}/s", format_bytes(bytes_per_s as u64))
}

/// An optional figure, `-` when absent.
fn opt<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or("-".to_string(), show)
}

fn yes_no(verified: bool) -> String {
    if verified { "yes" } else { "NO" }.to_string()
}

fn verdict(verified: bool) -> &'static str {
    if verified {
        "VERIFIED"
    } else {
        "FAILED"
    }
}

/// The sections every report starts with: command and machine.
fn preamble(out: &mut String, ctx: &Context) {
    heading(out, "Command");
    let _ = writeln!(out, "```\n{}\n```\n", ctx.command);
    heading(out, "Machine");
    let m = ctx.machine;
    figures(
        out,
        &[
            ("cores available", opt(m.cores, |c| c.to_string())),
            ("total memory", opt(m.memory_bytes, format_bytes)),
            ("kernel", opt(m.kernel.clone(), |k| k)),
            ("CPU model", opt(m.cpu.clone(), |c| c)),
        ],
    );
}

/// The shape's own rows.
fn shape_rows(s: &ShapeFields) -> Vec<(&'static str, String)> {
    vec![
        ("nodes (n)", s.nodes.to_string()),
        ("nodes per job (N)", s.nodes_per_job.to_string()),
        (
            "producers per node and job (m_p)",
            s.producers_per_node.to_string(),
        ),
        (
            "consumers per node and job (m_c)",
            s.consumers_per_node.to_string(),
        ),
        ("jobs (k)", s.jobs.to_string()),
        ("channels", s.channels.to_string()),
    ]
}

/// The sections every report ends with: errors, files and notes.
fn closing(out: &mut String, errors: &[String], ctx: &Context) {
    if !errors.is_empty() {
        heading(out, "Errors");
        for e in errors {
            let _ = writeln!(out, "- {}", e.replace('\n', " "));
        }
        out.push('\n');
    }
    heading(out, "Files");
    let rows: Vec<[String; 2]> = ctx
        .files
        .iter()
        .map(|(name, what)| [format!("[{name}]({name})"), what.clone()])
        .collect();
    table(out, ["file", "what it holds"], &rows);
    for note in ctx.notes {
        let _ = writeln!(out, "- {note}");
    }
    if !ctx.notes.is_empty() {
        out.push('\n');
    }
}

/// report.md of a `--compare` run: the matrix, then how each system failed.
pub fn compare(r: &CompareReport, ctx: &Context) -> String {
    let mut out = format!(
        "# plexus bench --compare: plexus {}\n\n",
        verdict(r.verified)
    );
    preamble(&mut out, ctx);
    heading(&mut out, "Shape");
    figures(
        &mut out,
        &[
            ("nodes", r.nodes.to_string()),
            ("producers per node and job", r.producers.to_string()),
            ("consumers per node and job", r.consumers.to_string()),
            ("jobs", r.jobs.to_string()),
            ("message size", format_bytes(r.message_size)),
            ("bytes per producer", format_bytes(r.bytes_per_producer)),
            (
                "stalled consumers (stall runs)",
                r.stall_consumers.to_string(),
            ),
            (
                "a link killed every (kill runs)",
                format!("{} ms", r.chaos_link_kill_ms),
            ),
            ("whole matrix took", format!("{:.1} s", r.elapsed_s)),
        ],
    );
    heading(&mut out, "The matrix");
    let outcome = |o: Option<super::super::baseline::Outcome>| opt(o, |o| o.name().to_string());
    let rows: Vec<[String; 7]> = r
        .compare
        .iter()
        .map(|row| match &row.skipped {
            Some(why) => [
                row.system.to_string(),
                format!("skipped: {why}"),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            None => [
                row.system.to_string(),
                opt(row.links_per_node_max, |l| l.to_string()),
                opt(row.throughput_bytes_per_s, rate),
                opt(row.stall_healthy_ratio, |x| format!("{x:.2}×")),
                opt(row.stall_buffered_bytes_max, format_bytes),
                outcome(row.stall_outcome),
                match (row.link_kill_outcome, row.link_kills) {
                    (Some(o), Some(k)) => format!("{} ({k} kills)", o.name()),
                    _ => "-".into(),
                },
            ],
        })
        .collect();
    table(
        &mut out,
        [
            "system",
            "links per node",
            "goodput",
            "others' goodput under stall",
            "held for a stalled consumer",
            "stalled run",
            "links killed",
        ],
        &rows,
    );
    for row in r.compare.iter().filter(|row| !row.how.is_empty()) {
        let _ = writeln!(out, "- **{}**: {}", row.system, row.how.join("; "));
    }
    out.push('\n');
    closing(&mut out, &r.errors, ctx);
    out
}

/// How the jobs arrived at the nodes, with the seed when it mattered.
fn arrival(r: &Report) -> String {
    match r.arrival_order {
        ArrivalOrder::Same => "same on every node".to_string(),
        ArrivalOrder::PerNodeRandom => format!("random per node (seed {})", r.seed),
    }
}

/// report.md of a throughput run (the default mode, with or without baselines).
pub fn throughput(r: &Report, bytes_per_producer: u64, ctx: &Context) -> String {
    let mut out = String::from("# plexus bench report\n\n");
    let _ = writeln!(
        out,
        "**{}**: {}, in {} process(es); {} job(s) completed, {} failed.\n",
        verdict(r.verified),
        r.shape,
        r.processes,
        r.jobs_completed,
        r.jobs_failed
    );
    preamble(&mut out, ctx);

    heading(&mut out, "Shape");
    let mut shape = shape_rows(&r.shape);
    shape.extend([
        (
            "message size (header included)",
            format_bytes(r.message_size),
        ),
        ("bytes per producer", format_bytes(bytes_per_producer)),
        (
            "credit pool per consumer",
            format_bytes(r.credit_pool_bytes),
        ),
        (
            "memory budget per node",
            opt(r.memory_budget_bytes, format_bytes),
        ),
        ("stalled consumers", r.stalled_consumers.to_string()),
        (
            "waves",
            format!("{} ({} jobs in all)", r.waves, r.jobs_total),
        ),
        ("arrival order", arrival(r)),
    ]);
    figures(&mut out, &shape);

    heading(&mut out, "Throughput");
    out.push_str(
        "Goodput: payload bytes the consumers received and verified, per second from the \
         start of the endpoints to the end of the last one. `plexus ÷ system` is the JSON's \
         `ratio_vs_<system>` (goodput) and `msgs_ratio_vs_<system>` (messages per second).\n\n",
    );
    let mut rows = vec![[
        "plexus".to_string(),
        yes_no(r.verified),
        format!("{:.3} s", r.elapsed_s),
        format_bytes(r.bytes_total),
        rate(r.throughput_bytes_per_s),
        format!("{:.0}", r.messages_per_s),
        r.links_per_node_max.to_string(),
        "-".to_string(),
        "-".to_string(),
        "-".to_string(),
    ]];
    for b in &r.baselines {
        let ratio = |prefix: &str| {
            let key = format!("{prefix}{}", b.system.replace('-', "_"));
            opt(r.comparisons.get(&key).copied().flatten(), |v| {
                format!("{v:.2}")
            })
        };
        if b.skipped {
            let note = b.note.clone().unwrap_or_default();
            let mut row: [String; 10] = Default::default();
            row[0] = b.system.to_string();
            row[1] = format!("skipped: {note}");
            for c in &mut row[2..] {
                *c = "-".to_string();
            }
            rows.push(row);
            continue;
        }
        rows.push([
            b.system.to_string(),
            yes_no(b.verified),
            opt(b.elapsed_s, |s| format!("{s:.3} s")),
            format_bytes(b.bytes_total),
            opt(b.throughput_bytes_per_s, rate),
            opt(b.messages_per_s, |m| format!("{m:.0}")),
            b.links_per_node_max.to_string(),
            b.connections.to_string(),
            ratio("ratio_vs_"),
            ratio("msgs_ratio_vs_"),
        ]);
    }
    table(
        &mut out,
        [
            "system",
            "verified",
            "elapsed",
            "delivered",
            "goodput",
            "msgs/s",
            "links per node",
            "connections",
            "plexus ÷ system (goodput)",
            "plexus ÷ system (msgs/s)",
        ],
        &rows,
    );

    consumption(&mut out, r);

    heading(&mut out, "Links");
    let fewer = (r.links_per_node_max > 0)
        .then(|| r.naive_connections_per_node as f64 / r.links_per_node_max as f64);
    figures(
        &mut out,
        &[
            (
                "links per node (most any node held, from the OS socket table)",
                r.links_per_node_max.to_string(),
            ),
            (
                "connections per node with one per channel",
                r.naive_connections_per_node.to_string(),
            ),
            (
                "one per channel ÷ plexus",
                opt(fewer, |f| format!("{f:.1}")),
            ),
        ],
    );

    heading(&mut out, "Memory");
    let share = r
        .memory_budget_bytes
        .filter(|&b| b > 0)
        .map(|b| r.peak_buffered_bytes as f64 / b as f64 * 100.0);
    figures(
        &mut out,
        &[
            (
                "peak buffered bytes (most any node held at once)",
                format_bytes(r.peak_buffered_bytes),
            ),
            (
                "memory budget per node",
                opt(r.memory_budget_bytes, format_bytes),
            ),
            (
                "peak buffered ÷ budget",
                opt(share, |s| format!("{s:.1} %")),
            ),
            (
                "longest admission wait",
                format!("{:.1} ms", r.admission_wait_ms_max),
            ),
            ("peak RSS", format_bytes(r.rss_peak_bytes)),
        ],
    );

    heading(&mut out, "Jobs");
    figures(
        &mut out,
        &[
            (
                "job latency p50 (first endpoint opened to last consumer ended)",
                opt(r.job_latency_ms_p50, |ms| format!("{ms:.2} ms")),
            ),
            (
                "job latency p99",
                opt(r.job_latency_ms_p99, |ms| format!("{ms:.2} ms")),
            ),
            (
                "RSS growth per job (after the first tenth of the waves)",
                opt(r.rss_growth_bytes_per_job, |b| format!("{b:.0} B")),
            ),
        ],
    );

    if r.stalled_consumers > 0 {
        heading(&mut out, "Stalled consumers");
        let held = (r.credit_pool_bytes > 0)
            .then(|| r.stalled_buffered_bytes_max as f64 / r.credit_pool_bytes as f64 * 100.0);
        figures(
            &mut out,
            &[
                ("stalled consumers", r.stalled_consumers.to_string()),
                (
                    "healthy consumers all done after",
                    format!("{:.3} s", r.healthy_elapsed_s),
                ),
                (
                    "healthy consumers' goodput",
                    rate(r.healthy_throughput_bytes_per_s),
                ),
                (
                    "most bytes a stalled consumer held",
                    format_bytes(r.stalled_buffered_bytes_max),
                ),
                (
                    "credit pool per consumer",
                    format_bytes(r.credit_pool_bytes),
                ),
                ("held ÷ pool", opt(held, |h| format!("{h:.1} %"))),
            ],
        );
    }

    if r.killed_node.is_some()
        || r.killed_endpoint.is_some()
        || r.link_kills > 0
        || r.link_resumes > 0
    {
        heading(&mut out, "Failures");
        let ms = |v: Option<f64>| opt(v, |v| format!("{v:.1} ms"));
        let endpoint = r.killed_endpoint.map(|e| {
            format!(
                "{} ({:?} {}/{} of job {})",
                e.index, e.role, e.node, e.slot, e.job
            )
            .to_lowercase()
        });
        figures(
            &mut out,
            &[
                ("killed node", opt(r.killed_node, |n| n.to_string())),
                ("killed endpoint", opt(endpoint, |e| e)),
                ("jobs it affected", format!("{:?}", r.affected_job_ids)),
                ("jobs failed", format!("{:?}", r.failed_job_ids)),
                (
                    "failure seen by every affected endpoint within",
                    opt(r.failure_detect_ms_max, |m| format!("{m} ms")),
                ),
                ("links killed from outside", r.link_kills.to_string()),
                ("link resumes", r.link_resumes.to_string()),
                ("link down until resumed, p50", ms(r.resume_ms_p50)),
                ("link down until resumed, p99", ms(r.resume_ms_p99)),
            ],
        );
    }

    closing(&mut out, &r.errors, ctx);
    out
}

/// The section on how the consumers read: the order, what it cost against interleaved
/// reading, and the most credit a consumer held.
fn consumption(out: &mut String, r: &Report) {
    heading(out, "Reading order");
    out.push_str(
        "How every consumer read its job's producers (`--consume`). An ordered reading is \
         compared with the same shape read interleaved, run right after \
         (`ratio_vs_interleaved`). A consumer's held credit is its peak of credit outstanding: \
         an upper bound of what its channels ever held, unread ones included.\n\n",
    );
    let held = (r.credit_pool_bytes > 0)
        .then(|| r.consumer_held_bytes_max as f64 / r.credit_pool_bytes as f64 * 100.0);
    figures(
        out,
        &[
            ("reading", r.consume_mode.name().to_string()),
            ("goodput", rate(r.throughput_bytes_per_s)),
            (
                "goodput of the same shape read interleaved",
                opt(r.interleaved_throughput_bytes_per_s, rate),
            ),
            (
                "this run ÷ interleaved",
                opt(r.ratio_vs_interleaved, |v| format!("{v:.2}")),
            ),
            (
                "most credit a consumer held",
                format_bytes(r.consumer_held_bytes_max),
            ),
            (
                "credit pool per consumer",
                format_bytes(r.credit_pool_bytes),
            ),
            ("held ÷ pool", opt(held, |h| format!("{h:.1} %"))),
        ],
    );
}

/// report.md of a `--latency` run.
pub fn latency(r: &LatencyReport, ctx: &Context) -> String {
    let mut out = String::from("# plexus bench report: latency\n\n");
    let _ = writeln!(
        out,
        "**{}**: {}; {}-byte messages at {:.0} per second for {:.2} s.\n",
        verdict(r.verified),
        r.shape,
        r.message_size,
        r.offered_rate,
        r.schedule_s
    );
    preamble(&mut out, ctx);

    heading(&mut out, "Shape");
    let mut shape = shape_rows(&r.shape);
    shape.extend([
        (
            "message size (header included)",
            format!("{} B", r.message_size),
        ),
        (
            "offered rate, whole run",
            format!("{:.0} msgs/s", r.offered_rate),
        ),
        ("messages per channel", r.messages_per_channel.to_string()),
        ("schedule", format!("{:.2} s", r.schedule_s)),
    ]);
    figures(&mut out, &shape);

    heading(&mut out, "Latency");
    out.push_str(
        "One-way latency from the producer's scheduled send time to the consumer's \
         receipt, over every message, in µs.\n\n",
    );
    if r.attached {
        out.push_str(
            "With `--agent`: plexus's endpoints attached over Unix sockets to nodes that ran \
             in the bench's own process (the attach hop within one process, not separate \
             processes); `embedded` is the same schedule with the endpoints opened on the \
             nodes themselves.\n\n",
        );
    }
    let row = |system: &str, verified: bool, f: &Figures| {
        let us = |v: Option<f64>| opt(v, |v| format!("{v:.1}"));
        [
            system.to_string(),
            yes_no(verified),
            f.messages_total.to_string(),
            format!("{:.0}", f.achieved_rate),
            us(f.latency_us_p50),
            us(f.latency_us_p99),
            us(f.latency_us_p999),
            us(f.latency_us_max),
            format!("{:.0}", f.send_lag_us_max),
            f.links_per_node_max.to_string(),
        ]
    };
    let mut rows = vec![row("plexus", r.plexus_verified, &r.figures)];
    rows.extend(
        r.baselines
            .iter()
            .map(|b| row(b.system, b.verified, &b.figures)),
    );
    table(
        &mut out,
        [
            "system",
            "verified",
            "messages",
            "achieved msgs/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "most a producer lagged its schedule",
            "links per node",
        ],
        &rows,
    );
    if let Some(ratio) = r.latency_p99_ratio_vs_raw_tcp {
        let _ = writeln!(
            out,
            "p99 plexus ÷ raw-tcp (`latency_p99_ratio_vs_raw_tcp`): {ratio:.2}\n"
        );
    }
    if let Some(ratio) = r.latency_p99_ratio_vs_embedded {
        let _ = writeln!(
            out,
            "p99 attached ÷ embedded (`latency_p99_ratio_vs_embedded`): {ratio:.2}\n"
        );
    }

    closing(&mut out, &r.errors, ctx);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_never_break_a_table() {
        assert_eq!(cell("a | b\nc"), "a \\| b c");
        let mut out = String::new();
        table(&mut out, ["x", "y"], &[["1".into(), "p|q".into()]]);
        assert_eq!(out, "| x | y |\n| --- | --- |\n| 1 | p\\|q |\n\n");
    }

    #[test]
    fn absent_figures_show_as_a_dash() {
        assert_eq!(opt(None::<u64>, format_bytes), "-");
        assert_eq!(opt(Some(2048), format_bytes), "2.00 KiB");
    }
}
