//! `aftercart demo`: a fresh SQLite database, the bundled sample store (200 products,
//! 500 customers, 3,000 orders over a year, 17,000 on-site events), and a worker whose
//! clock jumps from one due time to the next, so a year of follow-ups runs in seconds
//! with every rule in force. Emails land in the outbox as .eml files. Running it again
//! imports the same records (nothing changes) and sends nothing twice.

use super::{CliError, Io};
use crate::app::{open_store, open_worker};
use crate::config::Settings;
use crate::domain::Timestamp;
use crate::import::{Kind, import_reader};
use crate::jobs::{Clock, RunOptions, schedule_rules};

const SAMPLE: [(Kind, &str); 4] = [
    (Kind::Products, include_str!("../../sample/products.jsonl")),
    (
        Kind::Customers,
        include_str!("../../sample/customers.jsonl"),
    ),
    (Kind::Events, include_str!("../../sample/events.jsonl")),
    (Kind::Orders, include_str!("../../sample/orders.jsonl")),
];

pub async fn run(mut s: Settings, io: &mut Io<'_>) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    // The demo never touches the configured database: it keeps a file of its own, so a
    // second run finds every follow-up already final and sends nothing twice.
    s.database.url = "sqlite://data/demo.db".to_owned();
    let store = open_store(&s).await?;
    let rules = schedule_rules(&s);
    for (kind, text) in SAMPLE {
        let report = import_reader(
            &store,
            kind,
            text.as_bytes(),
            false,
            &rules,
            Timestamp::now(),
            |_| {},
        )
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
        writeln!(
            io.out,
            "imported {:>6} {:<9} ({} follow-ups scheduled)",
            report.stored,
            kind.as_str(),
            report.scheduled
        )?;
    }
    let first = store.next_wakeup().await?.unwrap_or_else(Timestamp::now);
    let clock = Clock::manual(first);
    let smtp_url = s.smtp.url.clone();
    let worker = open_worker(s, store.clone(), clock.clone(), RunOptions::new(true)).await?;
    writeln!(
        io.out,
        "running the worker from {} with time compressed…",
        first.rfc3339()
    )?;
    let run_started = std::time::Instant::now();
    let summary = worker.run(std::future::pending()).await?;
    let secs = run_started.elapsed().as_secs_f64();
    let r = store.status(clock.now(), clock.now()).await?;
    writeln!(io.out, "simulated up to {}", clock.now().rfc3339())?;
    writeln!(io.out, "follow-ups:")?;
    for (state, n) in &r.followups {
        writeln!(io.out, "  {state:<10} {n}")?;
    }
    writeln!(io.out, "skipped by reason:")?;
    for (reason, n) in &r.skipped_by_reason {
        writeln!(io.out, "  {reason:<22} {n}")?;
    }
    writeln!(
        io.out,
        "{} emails written to {} in {:.1}s ({:.0} follow-ups/s); total {:.1}s",
        summary.sent,
        smtp_url,
        secs,
        (summary.sent + summary.skipped) as f64 / secs.max(1e-9),
        started.elapsed().as_secs_f64()
    )?;
    writeln!(
        io.out,
        "open any .eml file in {} with a mail client to see what shoppers get",
        smtp_url.trim_start_matches("file://")
    )?;
    store.close().await;
    Ok(())
}
