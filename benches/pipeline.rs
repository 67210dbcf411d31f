//! End-to-end throughput: due follow-ups → claimed → decided and rendered → accepted by a
//! real SMTP server over TCP (the in-process `SmtpSink`, bodies not kept), and import
//! throughput of a generated orders file.
//!
//! ```text
//! cargo bench --bench pipeline                                   # SQLite, 1 worker
//! cargo bench --bench pipeline -- --postgres postgres://postgres@127.0.0.1:5432/postgres
//! ```
//! Options: `--followups N` (default 10000), `--import-orders N` (default 100000).
//! With `--postgres URL` each run gets a fresh database on that server, and the worker
//! runs are repeated with 1, 2 and 3 workers (in-process, each with its own name, its own
//! engine and SMTP connections, sharing the database like separate processes would).

#[path = "../tests/common/mod.rs"]
mod common;

use aftercart::domain::CampaignKey;
use aftercart::jobs::{Clock, RunOptions, Worker};
use aftercart_testkit::sink::SmtpSink;
use common::*;
use std::time::{Duration, Instant};

struct Args {
    postgres: Option<String>,
    followups: usize,
    import_orders: usize,
    profile: bool,
}

fn args() -> Args {
    let mut a = Args {
        postgres: None,
        followups: 10_000,
        import_orders: 100_000,
        profile: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--postgres" => a.postgres = it.next(),
            "--followups" => a.followups = it.next().and_then(|v| v.parse().ok()).unwrap(),
            "--import-orders" => a.import_orders = it.next().and_then(|v| v.parse().ok()).unwrap(),
            "--profile" => a.profile = true,
            // `cargo bench` passes --bench; anything else is ignored too.
            _ => {}
        }
    }
    a
}

struct Drain {
    followups: usize,
    sent: i64,
    skipped: i64,
    elapsed: Duration,
}

/// Imports enough orders for `followups` due follow-ups, then drains them with `workers`
/// in-process workers on the system clock (everything is due now).
async fn drain(admin: Option<&str>, followups: usize, workers: usize) -> Drain {
    let sink = SmtpSink::start().await;
    sink.set_keep_bodies(false);
    let db = fresh_db_at(admin).await;
    // AFTERCART__… variables in the bench's environment override the test defaults.
    let overrides: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AFTERCART__"))
        .collect();
    let env = [base_env(&db.url, &sink.url()), overrides].concat();
    let s = settings(&env);
    let store = store(&s).await;
    // ~1.8 follow-ups per sample order (two campaigns; cancelled orders have none).
    import_many(&store, &s, followups * 100 / 180).await;
    let total = store.followups(None, None, 10_000_000).await.unwrap().len();

    let mut runs = Vec::new();
    for i in 0..workers {
        let engine = engine(s.clone(), store.clone(), Clock::System).await;
        let mailer = aftercart::app::mailer(&s).await.unwrap();
        let mut opts = RunOptions::new(true);
        opts.name = format!("bench-{i}-{}", opts.name);
        runs.push(Worker::new(engine, mailer, opts));
    }
    let start = Instant::now();
    let handles: Vec<_> = runs
        .into_iter()
        .map(|w| tokio::spawn(w.run(std::future::pending())))
        .collect();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let elapsed = start.elapsed();
    let st = states(&store).await;
    assert_eq!(unfinished(&store).await, 0, "{st:?}");
    assert_eq!(
        sink.count() as i64,
        st["sent"],
        "one message per sent follow-up"
    );
    Drain {
        followups: total,
        sent: st["sent"],
        skipped: st["skipped"],
        elapsed,
    }
}

/// Orders per second for importing a generated `n`-order file (catalog and customers
/// loaded first, not timed); the import schedules each order's follow-ups too.
async fn import_rate(admin: Option<&str>, n: usize) -> (usize, Duration) {
    let db = fresh_db_at(admin).await;
    let s = settings(&base_env(&db.url, "file://outbox"));
    let store = store(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("customers.jsonl");
    let orders = dir.path().join("orders.jsonl");
    write_consenting_customers(&customers);
    write_orders(&orders, n);
    import(&store, &s, "products", &sample("products.jsonl")).await;
    import(&store, &s, "customers", &customers).await;
    let start = Instant::now();
    let report = import(&store, &s, "orders", &orders).await;
    let elapsed = start.elapsed();
    assert!(report.bad.is_empty());
    (n, elapsed)
}

fn print_drain(engine: &str, workers: usize, d: &Drain) {
    let secs = d.elapsed.as_secs_f64();
    println!(
        "| {engine:<10} | {workers} | {:>6} | {:>6} | {:>6} | {:>7.2} | {:>8.0} | {:>8.0} |",
        d.followups,
        d.sent,
        d.skipped,
        secs,
        (d.sent + d.skipped) as f64 / secs,
        d.sent as f64 / secs
    );
}

/// Where a follow-up's time goes, stage by stage on SQLite (`--profile`): the rules,
/// picks and rendering (`Engine::decide`), the SMTP send, and the ledger alone (claim and
/// finish with no work in between).
async fn profile(n: usize) {
    use aftercart::jobs::Decision;
    use aftercart::store::Finish;
    let sink = SmtpSink::start().await;
    sink.set_keep_bodies(false);
    let db = fresh_db_at(None).await;
    let s = settings(&base_env(&db.url, &sink.url()));
    let store = store(&s).await;
    import_many(&store, &s, n * 100 / 180).await;
    let rows = store.followups(None, None, n as i64).await.unwrap();
    let engine = engine(s.clone(), store.clone(), Clock::System).await;
    let now = aftercart::domain::Timestamp::now();

    let per = |t: Duration, k: usize| t.as_secs_f64() * 1e6 / k.max(1) as f64;
    let start = Instant::now();
    let mut emails = Vec::new();
    for r in &rows {
        if let Decision::Send(p) = engine
            .decide(&r.order_id, &CampaignKey::parse(&r.campaign).unwrap(), now)
            .await
            .unwrap()
        {
            emails.push(p.email);
        }
    }
    let t = start.elapsed();
    println!(
        "decide (load order + history, rules, picks, render), one at a time: {:.0} µs each, {:.0}/s",
        per(t, rows.len()),
        rows.len() as f64 / t.as_secs_f64()
    );

    // The two database reads inside decide, alone.
    let start = Instant::now();
    let mut orders = Vec::new();
    for r in &rows {
        orders.push(
            store
                .order_context(&r.order_id)
                .await
                .unwrap()
                .unwrap()
                .order,
        );
    }
    let t = start.elapsed();
    println!(
        "  of which order_context (order, items, customer): {:.0} µs each",
        per(t, rows.len())
    );
    let start = Instant::now();
    for o in &orders {
        engine.history(o, now).await.unwrap();
    }
    let t = start.elapsed();
    println!(
        "  of which history (bought, seen, emailed, sent last week): {:.0} µs each",
        per(t, rows.len())
    );

    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for chunk in rows.chunks(rows.len().div_ceil(8).max(1)) {
        let (e, chunk) = (engine.clone(), chunk.to_vec());
        set.spawn(async move {
            for r in chunk {
                e.decide(&r.order_id, &CampaignKey::parse(&r.campaign).unwrap(), now)
                    .await
                    .unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
    let t = start.elapsed();
    println!(
        "decide, 8 tasks: {:.0}/s",
        rows.len() as f64 / t.as_secs_f64()
    );

    let start = Instant::now();
    for e in emails.iter().take(500) {
        aftercart::mail::build_message(e).unwrap().formatted();
    }
    let t = start.elapsed();
    println!(
        "build + format a MIME message: {:.0} µs each",
        per(t, emails.len().min(500))
    );

    let mailer = aftercart::app::mailer(&s).await.unwrap();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let emails = std::sync::Arc::new(emails);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..32 {
        let (m, emails, next) = (mailer.clone(), emails.clone(), next.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(e) = emails.get(i) else { break };
                m.send(e).await.unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
    let t = start.elapsed();
    println!(
        "SMTP send (32 tasks, pool_size {}): {:.0} msg/s",
        s.smtp.pool_size,
        emails.len() as f64 / t.as_secs_f64()
    );

    let start = Instant::now();
    let mut done = 0;
    loop {
        let now = aftercart::domain::Timestamp::now();
        let c = store
            .claim_due("profile", now, now.plus(Duration::from_secs(60)), 32)
            .await
            .unwrap();
        if c.is_empty() {
            break;
        }
        let out: Vec<_> = c
            .iter()
            .map(|c| {
                (
                    c.id,
                    Finish::Skipped {
                        reason: aftercart::store::SkipReason::NothingToRecommend,
                    },
                )
            })
            .collect();
        store.finish("profile", &out, now).await.unwrap();
        done += c.len();
    }
    let t = start.elapsed();
    println!(
        "ledger alone (claim 32, finish 32 in one transaction): {:.0} rows/s",
        done as f64 / t.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    if a.profile {
        profile(a.followups.min(4_000)).await;
        return;
    }
    println!("follow-ups drained end to end (due → claimed → rendered → 250 from the SMTP sink)");
    println!("| engine     | workers | follow-ups | sent | skipped | seconds | final/s | sent/s |");
    println!("|---|---|---|---|---|---|---|---|");
    let d = drain(None, a.followups, 1).await;
    print_drain("sqlite", 1, &d);
    if let Some(pg) = a.postgres.as_deref() {
        for workers in 1..=3 {
            let d = drain(Some(pg), a.followups, workers).await;
            print_drain("postgresql", workers, &d);
        }
    }

    println!();
    println!("import of a generated orders file (follow-ups scheduled as part of it)");
    println!("| engine     | orders | seconds | orders/s |");
    println!("|---|---|---|---|");
    let mut engines = vec![("sqlite", None)];
    if let Some(pg) = a.postgres.as_deref() {
        engines.push(("postgresql", Some(pg)));
    }
    for (name, admin) in engines {
        let (n, t) = import_rate(admin, a.import_orders).await;
        println!(
            "| {name:<10} | {n} | {:.2} | {:.0} |",
            t.as_secs_f64(),
            n as f64 / t.as_secs_f64()
        );
    }
}
