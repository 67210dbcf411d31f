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
    let s2 = s.clone();
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
    let sent = store
        .followups(None, Some(crate::store::FollowupState::Sent), i64::MAX)
        .await?;
    let (clicks, orders) = simulate_clicks(&store, &s2, &sent, clock.now()).await?;
    if clicks > 0 {
        writeln!(
            io.out,
            "simulated (not real shoppers): {clicks} clicks on tracked links and {orders} orders after them"
        )?;
    }
    // Over the simulated period (a second run's clock starts today, the ledger's does not).
    let from = sent.iter().map(|f| f.due_at).min().unwrap_or(first);
    let end = sent
        .iter()
        .map(|f| f.due_at)
        .max()
        .unwrap_or(first)
        .plus(std::time::Duration::from_secs(1));
    let span = std::time::Duration::from_millis((end.0 - from.0).max(0) as u64);
    let report = crate::jobs::report(&store, &s2, end, None, span)
        .await
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    writeln!(
        io.out,
        "report (with the simulated clicks): {}",
        report.summary_line()
    )?;
    store.close().await;
    Ok(())
}

/// The share of sent emails the demo pretends were clicked, in per mille, and of those
/// clicks the share followed by an order.
const SIMULATED_CLICKS_PER_MILLE: u64 = 150;
const SIMULATED_ORDERS_PER_MILLE: u64 = 350;
/// Recorded as the hits' source, so simulated clicks are told from real ones.
const SIMULATED_SOURCE: &str = "demo-simulated";

/// A stable pseudo-random number in 0..1000 for a follow-up and a purpose.
fn draw(id: i64, salt: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{salt}\0{id}").as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]) % 1000
}

/// Pretends some shoppers clicked their email an hour after it arrived and some of them
/// bought the clicked product a day later (orders `SIM-…`, scheduling no follow-up), so
/// the report at the end has something to show. Only on the first run: the clicks are
/// recorded once (a second run finds them and adds nothing). Returns (clicks, orders).
async fn simulate_clicks(
    store: &crate::store::Store,
    s: &Settings,
    sent: &[crate::store::FollowupRow],
    now: Timestamp,
) -> Result<(u64, u64), CliError> {
    use crate::domain::{Money, ProductId};
    if !store.hit_counts().await?.is_empty() {
        return Ok((0, 0));
    }
    let prices: std::collections::HashMap<ProductId, Money> = store
        .products()
        .await?
        .into_iter()
        .map(|p| (p.id, p.price))
        .collect();
    let (mut clicks, mut lines) = (0u64, Vec::new());
    for f in sent {
        let (Some(sent_at), Some(first)) = (f.sent_at, f.items.first()) else {
            continue;
        };
        if draw(f.id, "click") >= SIMULATED_CLICKS_PER_MILLE {
            continue;
        }
        let Ok(product) = ProductId::parse(first) else {
            continue;
        };
        let at = sent_at.plus(std::time::Duration::from_secs(3_600));
        store
            .record_hit(&crate::store::Hit {
                followup_id: f.id,
                product: Some(&product),
                method: crate::measure::token::Method::Get,
                at,
                sent_at: Some(sent_at),
                source: SIMULATED_SOURCE,
            })
            .await?;
        clicks += 1;
        let Some(price) = prices.get(&product) else {
            continue;
        };
        if draw(f.id, "order") < SIMULATED_ORDERS_PER_MILLE {
            let placed = at
                .plus(std::time::Duration::from_secs(86_400))
                .min(now.plus(s.attribution.click_window));
            lines.push(serde_json::json!({
                "id": format!("SIM-{}", f.id), "customer_id": f.customer_id, "status": "completed",
                "created_at": placed.rfc3339(), "completed_at": placed.rfc3339(),
                "items": [{"product_id": product.as_str(), "quantity": 1, "unit_price": price.decimal()}],
                "total": price.decimal(), "currency": s.store.currency,
            }).to_string());
        }
    }
    let text = lines.join("\n");
    // No rules: a simulated order schedules no follow-up.
    let report = import_reader(
        store,
        Kind::Orders,
        text.as_bytes(),
        false,
        &[],
        now,
        |_| {},
    )
    .await
    .map_err(|e| CliError::Runtime(e.to_string()))?;
    Ok((clicks, report.stored as u64))
}
