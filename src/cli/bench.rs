//! `aftercart bench`: end-to-end throughput on this machine, measured against its own SMTP
//! ceiling in the same run. A generated store of N orders (the bundled sample repeated
//! with new order and customer ids, every customer consenting) is imported into a fresh
//! SQLite file (or an empty PostgreSQL database), Postfix's `smtp-sink` listens on a free
//! 127.0.0.1 port (a child process, killed at the end), `smtp-source` measures what 8
//! connections get through that sink with a message of the same size, and the worker
//! drains every due follow-up against it with the configured worker settings. Printed:
//! import orders/s, sent/s, the smtp-source rate, their ratio and the busy time per stage.
//!
//! Only the rules that would hold mail back for reasons other than speed are switched off:
//! quiet hours, the weekly cap and holdout groups (the sample's timestamps are in the past,
//! so every follow-up is due now on the system clock).

use super::{CliError, Io};
use crate::app::{mailer, open_engine, open_store};
use crate::config::Settings;
use crate::domain::{CampaignKey, HoldoutShare, Timestamp};
use crate::import::{Kind, import_reader};
use crate::jobs::{Clock, Decision, Engine, RunOptions, RunSummary, StageFigure, Worker};
use crate::store::{FollowupState, Store};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const PRODUCTS: &str = include_str!("../../sample/products.jsonl");
const CUSTOMERS: &str = include_str!("../../sample/customers.jsonl");
const EVENTS: &str = include_str!("../../sample/events.jsonl");
const ORDERS: &str = include_str!("../../sample/orders.jsonl");

/// SMTP sessions `smtp-source` uses for the ceiling.
const SOURCE_SESSIONS: usize = 8;

/// Which SMTP server the worker sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    /// Postfix's `smtp-sink` (Debian package postfix), the ceiling measured with `smtp-source`.
    Postfix,
    /// A minimal in-process sink: for machines without Postfix (no ceiling then, unless
    /// `smtp-source` is installed).
    Builtin,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Orders to generate and import.
    #[arg(long, default_value_t = 10_000)]
    pub orders: usize,
    /// An empty PostgreSQL database to use instead of a fresh temporary SQLite file.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Worker instances draining the ledger at once (each with its own engine and SMTP
    /// connections, as separate processes would have).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[arg(long, value_enum, default_value_t = SinkKind::Postfix)]
    pub sink: SinkKind,
    /// Messages `smtp-source` sends for the ceiling (default: the sent count, at least 2,000).
    #[arg(long)]
    pub source_messages: Option<usize>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    engine: &'static str,
    sink: &'static str,
    orders: usize,
    import_seconds: f64,
    import_orders_per_s: f64,
    followups_due: i64,
    workers: usize,
    concurrency: usize,
    batch_size: usize,
    smtp_pool_size: usize,
    sent: u64,
    skipped: u64,
    failed: u64,
    retried: u64,
    deferred: u64,
    held_back: u64,
    /// Messages the sink accepted from the worker (None when it cannot tell).
    sink_received: Option<u64>,
    drain_seconds: f64,
    sent_per_s: f64,
    final_per_s: f64,
    message_bytes: usize,
    smtp_source: Option<SourceRun>,
    /// sent/s ÷ the smtp-source rate.
    ratio: Option<f64>,
    stages: Vec<StageFigure>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct SourceRun {
    sessions: usize,
    messages: usize,
    seconds: f64,
    per_s: f64,
}

pub async fn run(mut s: Settings, a: BenchArgs, io: &mut Io<'_>) -> Result<(), CliError> {
    if a.orders == 0 || a.workers == 0 {
        return Err(CliError::Usage(
            "--orders and --workers must be at least 1".into(),
        ));
    }
    let tools = postfix_tools();
    if a.sink == SinkKind::Postfix && tools.is_none() {
        return Err(CliError::Runtime(
            "smtp-sink and smtp-source (Postfix's test tools) are not installed: \
             apt-get install postfix (no daemon needs to run), or pass --sink builtin"
                .into(),
        ));
    }
    let dir = TempDir::new()?;
    let engine_name = match &a.database_url {
        Some(url) if url.starts_with("postgres") => {
            s.database.url = url.clone();
            "postgresql"
        }
        Some(_) => {
            return Err(CliError::Usage(
                "--database-url takes a postgres:// URL (SQLite runs use a fresh temporary file)"
                    .into(),
            ));
        }
        None => {
            s.database.url = format!("sqlite://{}", dir.path.join("bench.db").display());
            "sqlite"
        }
    };
    s.limits.quiet_hours = None;
    s.limits.max_emails_per_customer_per_week = u32::MAX;
    for c in &mut s.campaigns {
        c.holdout_share = HoldoutShare::OFF;
    }

    let store = open_store(&s).await?;
    if store
        .status(Timestamp::now(), Timestamp::now())
        .await?
        .followups
        .values()
        .sum::<i64>()
        > 0
    {
        return Err(CliError::Usage(
            "the bench needs an empty database: this one has follow-ups already".into(),
        ));
    }
    if !a.json {
        writeln!(io.out, "generating and importing {} orders…", a.orders)?;
    }
    let (import_secs, due) = generate_and_import(&store, &s, a.orders).await?;

    let sink = match a.sink {
        SinkKind::Postfix => {
            let (sink_bin, _) = tools.as_ref().expect("checked above");
            Sink::postfix(sink_bin).await?
        }
        SinkKind::Builtin => Sink::builtin().await?,
    };
    s.smtp.url = format!("smtp://127.0.0.1:{}", sink.port);

    let mut engines = Vec::with_capacity(a.workers);
    let mut mailers = Vec::with_capacity(a.workers);
    for _ in 0..a.workers {
        mailers.push(mailer(&s).await?);
        engines.push(open_engine(s.clone(), store.clone(), Clock::System).await?);
    }
    let message_bytes = sample_message_size(&engines[0], &store).await?;
    for e in &engines {
        e.stages.reset();
    }

    if !a.json {
        writeln!(
            io.out,
            "draining {due} due follow-ups with {} worker(s) against {} on {}…",
            a.workers,
            sink.label(),
            s.smtp.url
        )?;
    }
    let before = sink.received();
    let started = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    for (i, (e, m)) in engines.iter().zip(&mailers).enumerate() {
        let mut opts = RunOptions::new(true);
        opts.name = format!("bench{i}-{}", opts.name);
        let w = Worker::new(e.clone(), Arc::clone(m), opts);
        runs.spawn(w.run(std::future::pending()));
    }
    let mut total = RunSummary::default();
    while let Some(r) = runs.join_next().await {
        let r = r.map_err(|e| CliError::Runtime(format!("worker task: {e}")))??;
        total.sent += r.sent;
        total.skipped += r.skipped;
        total.failed += r.failed;
        total.retried += r.retried;
        total.deferred += r.deferred;
        total.held_back += r.held_back;
    }
    let drain = started.elapsed().as_secs_f64();
    for m in &mailers {
        m.shutdown().await;
    }
    // The sink counts what it accepted; a moment for its counter to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sink_received = sink.received().map(|n| n - before.unwrap_or(0));
    // The run counts only if it did what it says: every due follow-up final, one message
    // at the sink per send.
    let st = store.status(Timestamp::now(), Timestamp::now()).await?;
    let left: i64 = ["scheduled", "deferred", "sending"]
        .iter()
        .map(|k| st.followups.get(*k).copied().unwrap_or(0))
        .sum();
    if left > 0 || sink_received.is_some_and(|n| n != total.sent) {
        sink.stop().await;
        return Err(CliError::Runtime(format!(
            "the run is not valid: {left} follow-ups left unfinished, {} sent, the sink received {}",
            total.sent,
            sink_received.unwrap_or_default()
        )));
    }

    let source = match &tools {
        Some((_, source_bin)) => {
            let messages = a
                .source_messages
                .unwrap_or((total.sent as usize).max(2_000));
            Some(smtp_source(source_bin, sink.port, messages, message_bytes).await?)
        }
        None => None,
    };
    let sink_label = sink.label();
    sink.stop().await;

    let mut stages: Vec<StageFigure> = Vec::new();
    for e in &engines {
        for (i, f) in e.stages.figures().into_iter().enumerate() {
            match stages.get_mut(i) {
                Some(t) => {
                    t.seconds += f.seconds;
                    t.count += f.count;
                }
                None => stages.push(f),
            }
        }
    }
    let sent_per_s = total.sent as f64 / drain.max(1e-9);
    let w = &s.worker;
    let report = Report {
        engine: engine_name,
        sink: sink_label,
        orders: a.orders,
        import_seconds: import_secs,
        import_orders_per_s: a.orders as f64 / import_secs.max(1e-9),
        followups_due: due,
        workers: a.workers,
        concurrency: w.concurrency,
        batch_size: w.batch_size,
        smtp_pool_size: s.smtp.pool_size,
        sent: total.sent,
        skipped: total.skipped,
        failed: total.failed,
        retried: total.retried,
        deferred: total.deferred,
        held_back: total.held_back,
        sink_received,
        drain_seconds: drain,
        sent_per_s,
        final_per_s: (total.sent + total.skipped + total.failed) as f64 / drain.max(1e-9),
        message_bytes,
        ratio: source.as_ref().map(|r| sent_per_s / r.per_s.max(1e-9)),
        smtp_source: source,
        stages,
    };
    store.close().await;
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| CliError::Runtime(e.to_string()))?;
        writeln!(io.out, "{text}")?;
    } else {
        print_text(&report, io)?;
    }
    Ok(())
}

fn print_text(r: &Report, io: &mut Io<'_>) -> Result<(), CliError> {
    let o = &mut io.out;
    writeln!(
        o,
        "import: {} orders in {:.2}s: {:.0} orders/s ({} follow-ups due)",
        r.orders, r.import_seconds, r.import_orders_per_s, r.followups_due
    )?;
    writeln!(
        o,
        "worker ({}, {} worker(s), concurrency {}, batch {}, smtp pool {}): {} sent, {} skipped, {} failed in {:.2}s",
        r.engine,
        r.workers,
        r.concurrency,
        r.batch_size,
        r.smtp_pool_size,
        r.sent,
        r.skipped,
        r.failed,
        r.drain_seconds
    )?;
    writeln!(
        o,
        "sent/s: {:.0} (final/s incl. skipped: {:.0}); sink received {}",
        r.sent_per_s,
        r.final_per_s,
        r.sink_received
            .map_or_else(|| "?".to_owned(), |n| n.to_string())
    )?;
    match &r.smtp_source {
        Some(src) => writeln!(
            o,
            "smtp-source ceiling: {:.0} msg/s ({} messages of {} bytes over {} sessions, {:.2}s); ratio {:.2}",
            src.per_s,
            src.messages,
            r.message_bytes,
            src.sessions,
            src.seconds,
            r.ratio.unwrap_or_default()
        )?,
        None => writeln!(
            o,
            "smtp-source ceiling: not measured (smtp-source not installed)"
        )?,
    }
    writeln!(
        o,
        "busy time per stage (summed over concurrent tasks, µs per follow-up):"
    )?;
    let n = (r.sent + r.skipped + r.failed).max(1) as f64;
    for f in &r.stages {
        writeln!(
            o,
            "  {:<7} {:>8.3}s  {:>7.1} µs  ({} times)",
            f.stage,
            f.seconds,
            f.seconds * 1e6 / n,
            f.count
        )?;
    }
    Ok(())
}

/// Imports the sample catalog, customers (repeated with new ids, all consenting) and
/// events untimed, then `n` orders timed; returns (seconds of the order import, due
/// follow-ups).
async fn generate_and_import(
    store: &Store,
    s: &Settings,
    n: usize,
) -> Result<(f64, i64), CliError> {
    let sample: Vec<serde_json::Value> = parse_lines(ORDERS)?;
    let customers: Vec<serde_json::Value> = parse_lines(CUSTOMERS)?;
    let passes = n.div_ceil(sample.len());
    let mut cust_text = String::new();
    for pass in 0..passes {
        for c in &customers {
            let mut c = c.clone();
            c["marketing_consent"] = serde_json::Value::Bool(true);
            if pass > 0 {
                c["id"] = format!("{}-{pass}", c["id"].as_str().unwrap_or_default()).into();
                let email = c["email"].as_str().unwrap_or_default();
                if let Some((local, domain)) = email.split_once('@') {
                    c["email"] = format!("{local}+{pass}@{domain}").into();
                }
            }
            cust_text.push_str(&c.to_string());
            cust_text.push('\n');
        }
    }
    let mut order_text = String::new();
    for i in 0..n {
        let mut o = sample[i % sample.len()].clone();
        let pass = i / sample.len();
        if pass > 0 {
            o["id"] = format!("{}-{pass}", o["id"].as_str().unwrap_or_default()).into();
            o["customer_id"] =
                format!("{}-{pass}", o["customer_id"].as_str().unwrap_or_default()).into();
        }
        order_text.push_str(&o.to_string());
        order_text.push('\n');
    }
    let rules = crate::jobs::schedule_rules(s);
    let now = Timestamp::now();
    for (kind, text) in [
        (Kind::Products, PRODUCTS),
        (Kind::Customers, cust_text.as_str()),
        (Kind::Events, EVENTS),
    ] {
        import_reader(store, kind, text.as_bytes(), false, &rules, now, |_| {})
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
    }
    let started = Instant::now();
    let report = import_reader(
        store,
        Kind::Orders,
        order_text.as_bytes(),
        false,
        &rules,
        now,
        |_| {},
    )
    .await
    .map_err(|e| CliError::Runtime(e.to_string()))?;
    let secs = started.elapsed().as_secs_f64();
    if !report.bad.is_empty() {
        return Err(CliError::Runtime(format!(
            "{} generated orders were refused",
            report.bad.len()
        )));
    }
    let st = store.status(Timestamp::now(), Timestamp::now()).await?;
    let due = st.followups.get("scheduled").copied().unwrap_or(0)
        + st.followups.get("deferred").copied().unwrap_or(0);
    Ok((secs, due))
}

fn parse_lines(text: &str) -> Result<Vec<serde_json::Value>, CliError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| CliError::Runtime(e.to_string())))
        .collect()
}

/// The size of a typical message: the first follow-up that is a send, rendered and
/// formatted (nothing is sent or written).
async fn sample_message_size(e: &Engine, store: &Store) -> Result<usize, CliError> {
    let rows = store
        .followups(None, Some(FollowupState::Scheduled), 200)
        .await?;
    for r in rows {
        let key = CampaignKey::parse(&r.campaign).map_err(CliError::Runtime)?;
        if let Decision::Send(p) = e.decide(&r.order_id, &key, Timestamp::now()).await? {
            let m = crate::mail::build_message(&p.email)
                .map_err(|e| CliError::Runtime(e.to_string()))?;
            return Ok(m.formatted().len());
        }
    }
    Ok(12_000)
}

/// (smtp-sink, smtp-source) when both are installed (on PATH or in /usr/sbin).
fn postfix_tools() -> Option<(PathBuf, PathBuf)> {
    Some((find_tool("smtp-sink")?, find_tool("smtp-source")?))
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d: PathBuf| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, CliError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_listening(port: u16) -> Result<(), CliError> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(CliError::Runtime(format!(
        "the SMTP sink does not listen on 127.0.0.1:{port}"
    )))
}

/// The SMTP server of the run.
struct Sink {
    port: u16,
    received: Arc<AtomicU64>,
    child: Option<Child>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// `smtp-sink -c` on a free port; its counter ("… mesg=N\r") tells what it accepted.
    async fn postfix(bin: &Path) -> Result<Sink, CliError> {
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c");
        if is_root() {
            // smtp-sink refuses to run as root without a user to switch to.
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg(format!("127.0.0.1:{port}"))
            .arg("1024")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| CliError::Runtime(format!("{}: {e}", bin.display())))?;
        let mut out = child.stdout.take().expect("piped");
        let received = Arc::new(AtomicU64::new(0));
        let r = Arc::clone(&received);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut tail = String::new();
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.push_str(&String::from_utf8_lossy(&buf[..n]));
                if let Some(end) = tail.rfind('\r') {
                    let last = tail[..end].rsplit('\r').next().unwrap_or_default();
                    if let Some(v) = last
                        .rsplit_once("mesg=")
                        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                    {
                        r.store(v, Ordering::Relaxed);
                    }
                    tail.drain(..=end);
                }
            }
        });
        let sink = Sink {
            port,
            received,
            child: Some(child),
            task,
        };
        wait_listening(port).await?;
        Ok(sink)
    }

    async fn builtin() -> Result<Sink, CliError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(AtomicU64::new(0));
        let r = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let _ = conn.set_nodelay(true);
                tokio::spawn(serve_smtp(conn, Arc::clone(&r)));
            }
        });
        Ok(Sink {
            port,
            received,
            child: None,
            task,
        })
    }

    fn label(&self) -> &'static str {
        if self.child.is_some() {
            "smtp-sink"
        } else {
            "builtin"
        }
    }

    fn received(&self) -> Option<u64> {
        Some(self.received.load(Ordering::Relaxed))
    }

    async fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        self.task.abort();
    }
}

/// One SMTP session of the built-in sink: accepts everything, keeps nothing.
async fn serve_smtp(conn: tokio::net::TcpStream, received: Arc<AtomicU64>) {
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    if w.write_all(b"220 bench ESMTP\r\n").await.is_err() {
        return;
    }
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let verb = String::from_utf8_lossy(&line[..line.len().min(4)]).to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-bench\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "DATA" => {
                if w.write_all(b"354 go ahead\r\n").await.is_err() {
                    return;
                }
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == b".\r\n" || line == b".\n" => break,
                        Ok(_) => {}
                    }
                }
                received.fetch_add(1, Ordering::Relaxed);
                b"250 2.0.0 queued\r\n"
            }
            "QUIT" => {
                let _ = w.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"250 ok\r\n",
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// `smtp-source` over `SOURCE_SESSIONS` long-lived sessions (`-d`), `messages` messages
/// with a body of about `bytes` bytes.
async fn smtp_source(
    bin: &Path,
    port: u16,
    messages: usize,
    bytes: usize,
) -> Result<SourceRun, CliError> {
    let started = Instant::now();
    let out = Command::new(bin)
        .arg("-d")
        .args(["-s", &SOURCE_SESSIONS.to_string()])
        .args(["-m", &messages.to_string()])
        .args(["-l", &bytes.to_string()])
        .args([
            "-f",
            "bench@aftercart.invalid",
            "-t",
            "sink@aftercart.invalid",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| CliError::Runtime(format!("{}: {e}", bin.display())))?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(CliError::Runtime(format!(
            "smtp-source failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(SourceRun {
        sessions: SOURCE_SESSIONS,
        messages,
        seconds,
        per_s: messages as f64 / seconds.max(1e-9),
    })
}

/// A directory of the run's own, removed at the end (also on an error).
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir, CliError> {
        let suffix = crate::unsubscribe::random_secret();
        let path = std::env::temp_dir().join(format!("aftercart-bench-{}", &suffix[..12]));
        std::fs::create_dir_all(&path)
            .map_err(|e| CliError::Runtime(format!("{}: {e}", path.display())))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
