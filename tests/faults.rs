//! SMTP faults against a real SMTP server over TCP (`SmtpSink` with a `FaultPlan`) and a
//! real database: 4xx and connection errors are retried with backoff and sent once, 5xx
//! fails at once with the reply kept, the last attempt fails with the last reply, and an
//! operator can re-queue failed follow-ups without ever re-queuing a sent one.
//!
//! The worker runs in process with a manual clock (`until_idle`): when nothing is due the
//! clock jumps to the next due or retry time, so backoffs of minutes cost no wall time and
//! the recorded times show that the retry waited.

mod common;

use aftercart::jobs::{Clock, RunOptions, Worker};
use aftercart::store::{FollowupRow, Store};
use aftercart_testkit::sink::{Fault, FaultPlan, SmtpSink};
use common::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Orders imported per test: ~190 follow-ups, enough for batches and several customers.
const ORDERS: usize = 100;

async fn all_rows(store: &Store) -> Vec<FollowupRow> {
    store.followups(None, None, 1_000_000).await.unwrap()
}

/// Every follow-up ended sent, skipped (with a reason) or failed (with a reply).
fn assert_all_final(rows: &[FollowupRow]) {
    for r in rows {
        match r.state.as_str() {
            "sent" => assert!(r.message_id.is_some() && r.sent_at.is_some(), "{r:?}"),
            "skipped" => assert!(r.reason.is_some(), "{r:?}"),
            "failed" => assert!(r.smtp_reply.is_some(), "{r:?}"),
            _ => panic!("follow-up left unfinished: {r:?}"),
        }
    }
}

/// Wraps a plan so the test sees every DATA attempt's Message-ID, accepted or not (the
/// sink only lists accepted ones).
fn recording(plan: impl Fn(&str, usize) -> Fault + Send + Sync + 'static) -> (FaultPlan, Attempts) {
    let seen: Attempts = Arc::default();
    let log = seen.clone();
    let plan = FaultPlan::custom(move |id, prev| {
        *log.lock().unwrap().entry(id.to_owned()).or_default() += 1;
        plan(id, prev)
    });
    (plan, seen)
}
type Attempts = Arc<Mutex<HashMap<String, usize>>>;

/// Sent rows: each Message-ID accepted exactly once, after exactly `attempts` tries.
fn assert_sent_once_after(sink: &SmtpSink, rows: &[FollowupRow], attempts: i64) -> usize {
    let received = sink.message_ids();
    let distinct: HashSet<&String> = received.iter().collect();
    if distinct.len() != received.len() {
        let mut seen = HashSet::new();
        let twice: Vec<&String> = received.iter().filter(|id| !seen.insert(*id)).collect();
        let rows_of: Vec<&FollowupRow> = rows
            .iter()
            .filter(|r| r.message_id.as_ref().is_some_and(|m| twice.contains(&m)))
            .collect();
        let tries: Vec<usize> = twice.iter().map(|id| sink.attempts(id)).collect();
        panic!("a Message-ID was accepted twice: {twice:?}, attempts {tries:?}, rows {rows_of:?}");
    }
    let sent: Vec<&FollowupRow> = rows.iter().filter(|r| r.state == "sent").collect();
    assert_eq!(
        sent.len(),
        received.len(),
        "one accepted message per sent row"
    );
    for r in &sent {
        let id = r.message_id.as_deref().unwrap();
        assert!(
            distinct.contains(&id.to_owned()),
            "{r:?} never reached the server"
        );
        assert_eq!(r.attempts, attempts, "{r:?}");
        assert_eq!(sink.attempts(id), attempts as usize, "{r:?}");
        assert!(r.smtp_reply.as_deref().unwrap().starts_with("250"), "{r:?}");
    }
    sent.len()
}

#[tokio::test]
async fn a_451_is_retried_after_the_backoff_and_sent_once() {
    let sink = SmtpSink::start().await;
    sink.set_faults(FaultPlan::reply_first(1, "451 4.3.0 try again later"));
    let db = fresh_db().await;
    // A long base: on the manual clock it costs nothing, and it stands out in the times.
    let s = settings(&with(
        base_env(&db.url, &sink.url()),
        &[
            ("AFTERCART__SMTP__RETRY_BASE", "10m"),
            ("AFTERCART__SMTP__RETRY_MAX", "1h"),
        ],
    ));
    let store = store(&s).await;
    import_sample(&store, &s, Some(ORDERS)).await;

    let summary = run_until_idle(&s, &store, clock_at_first_due(&store).await).await;
    let rows = all_rows(&store).await;
    assert_all_final(&rows);
    assert!(rows.iter().all(|r| r.state != "failed"), "nothing fails");
    let sent = assert_sent_once_after(&sink, &rows, 2);
    assert!(sent > 20, "{summary:?}");
    assert_eq!(summary.retried as usize, sent, "{summary:?}");
    // The retry was claimed only once the clock passed the backoff (≥ 0.8 × base, the
    // jitter's floor), counted from the first attempt, itself at or after the due time.
    for r in rows.iter().filter(|r| r.state == "sent") {
        let waited = r.sent_at.unwrap().0 - r.due_at.0;
        assert!(waited >= 8 * 60_000, "retried after {waited} ms: {r:?}");
    }
}

#[tokio::test]
async fn a_550_fails_at_once_with_the_reply_kept() {
    let sink = SmtpSink::start().await;
    let (plan, seen) = recording(|_, _| Fault::Reply("550 5.1.1 mailbox unavailable".into()));
    sink.set_faults(plan);
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, &sink.url()));
    let store = store(&s).await;
    import_sample(&store, &s, Some(ORDERS)).await;

    let summary = run_until_idle(&s, &store, clock_at_first_due(&store).await).await;
    let rows = all_rows(&store).await;
    assert_all_final(&rows);
    assert_eq!(sink.count(), 0);
    assert_eq!(summary.retried, 0, "{summary:?}");
    let failed: Vec<&FollowupRow> = rows.iter().filter(|r| r.state == "failed").collect();
    assert!(failed.len() > 20, "{summary:?}");
    assert!(rows.iter().all(|r| r.state != "sent"));
    for r in &failed {
        assert_eq!(
            r.smtp_reply.as_deref(),
            Some("550 5.1.1 mailbox unavailable"),
            "{r:?}"
        );
        assert_eq!(r.attempts, 1, "no retry after a 5xx: {r:?}");
        assert!(r.sent_at.is_none(), "{r:?}");
    }
    // A dead mailbox is suppressed for later campaigns.
    let suppressed: HashSet<String> = store
        .suppressions()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.email)
        .collect();
    for r in &failed {
        let c = store.customer(&r.customer_id).await.unwrap().unwrap();
        assert!(
            suppressed.contains(&c.customer.email.as_str().to_lowercase()),
            "{}",
            c.customer.email
        );
    }
    // The server saw each failed follow-up exactly once.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), failed.len());
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
}

#[tokio::test]
async fn a_connection_dropped_mid_data_is_retried_and_sent() {
    let sink = SmtpSink::start().await;
    sink.set_faults(FaultPlan::drop_during_data_first(1));
    let db = fresh_db().await;
    let s = settings(&base_env(&db.url, &sink.url()));
    let store = store(&s).await;
    import_sample(&store, &s, Some(ORDERS)).await;

    run_until_idle(&s, &store, clock_at_first_due(&store).await).await;
    let rows = all_rows(&store).await;
    assert_all_final(&rows);
    assert!(rows.iter().all(|r| r.state != "failed"), "nothing fails");
    assert!(assert_sent_once_after(&sink, &rows, 2) > 20);
}

/// A server that never answers the final dot: the outcome is unknown (it may have
/// delivered), so the message is resent only once a lease has passed, with the same
/// Message-ID, as after a crash.
#[tokio::test]
async fn a_stalled_server_times_out_and_the_message_is_sent_again_after_the_lease() {
    let sink = SmtpSink::start().await;
    let firsts: Arc<Mutex<HashMap<String, std::time::Instant>>> = Arc::default();
    let gaps: Arc<Mutex<Vec<std::time::Duration>>> = Arc::default();
    let (f, g) = (firsts.clone(), gaps.clone());
    sink.set_faults(FaultPlan::custom(move |id, prev| {
        if prev == 0 {
            f.lock()
                .unwrap()
                .insert(id.to_owned(), std::time::Instant::now());
            Fault::Stall
        } else {
            g.lock().unwrap().push(f.lock().unwrap()[id].elapsed());
            Fault::Accept
        }
    }));
    let db = fresh_db().await;
    // Enough connections that the stalls (500 ms each) run side by side, not in a queue.
    let s = settings(&with(
        base_env(&db.url, &sink.url()),
        &[
            ("AFTERCART__SMTP__TIMEOUT", "500ms"),
            ("AFTERCART__SMTP__DATA_TIMEOUT", "500ms"),
            ("AFTERCART__SMTP__POOL_SIZE", "32"),
            ("AFTERCART__SMTP__RETRY_BASE", "200ms"),
        ],
    ));
    let store = store(&s).await;
    import_sample(&store, &s, Some(40)).await;

    // The system clock: every follow-up is due now, so the stalls overlap (on the manual
    // clock they would come one due time after another, 500 ms each).
    run_until_idle(&s, &store, Clock::System).await;
    let rows = all_rows(&store).await;
    assert_all_final(&rows);
    assert!(rows.iter().all(|r| r.state != "failed"), "nothing fails");
    let sent = assert_sent_once_after(&sink, &rows, 2);
    assert!(sent > 10);
    // The resend waited for the lease (3 s in the test settings), not the 200 ms backoff.
    let gaps = gaps.lock().unwrap();
    assert_eq!(gaps.len(), sent);
    assert!(
        gaps.iter().all(|g| *g >= std::time::Duration::from_secs(3)),
        "{gaps:?}"
    );
}

#[tokio::test]
async fn the_last_attempt_fails_with_its_reply_and_an_operator_can_requeue_failed_ones() {
    let sink = SmtpSink::start().await;
    // Every third message is refused for good with 451s; the rest go through, so the
    // ledger ends with both sent and failed follow-ups.
    let unlucky = |id: &str| id.bytes().map(u32::from).sum::<u32>() % 3 == 0;
    sink.set_faults(FaultPlan::custom(move |id, prev| {
        if unlucky(id) {
            Fault::Reply(format!("451 4.7.1 greylisted (attempt {})", prev + 1))
        } else {
            Fault::Accept
        }
    }));
    let db = fresh_db().await;
    let env = with(
        base_env(&db.url, &sink.url()),
        &[("AFTERCART__SMTP__MAX_ATTEMPTS", "2")],
    );
    let s = settings(&env);
    let store = store(&s).await;
    import_sample(&store, &s, Some(ORDERS)).await;

    run_until_idle(&s, &store, clock_at_first_due(&store).await).await;
    let rows = all_rows(&store).await;
    assert_all_final(&rows);
    let failed: Vec<&FollowupRow> = rows.iter().filter(|r| r.state == "failed").collect();
    let sent: Vec<&FollowupRow> = rows.iter().filter(|r| r.state == "sent").collect();
    assert!(!failed.is_empty() && !sent.is_empty());
    for r in &failed {
        // The last reply, not the first.
        assert_eq!(
            r.smtp_reply.as_deref(),
            Some("451 4.7.1 greylisted (attempt 2)"),
            "{r:?}"
        );
        assert_eq!(r.attempts, 2, "{r:?}");
    }

    // What an operator sees: the binary lists the failed ones with their replies.
    let (code, out, err) = run(&env, &["followups", "--state", "failed", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), failed.len().min(100));
    for f in &listed {
        assert_eq!(f["state"], "failed");
        assert_eq!(f["smtp_reply"], "451 4.7.1 greylisted (attempt 2)");
        assert_eq!(f["attempts"], 2);
    }

    // Re-queue: failed ones go back to scheduled with fresh attempts; sent ones stay.
    let (code, out, err) = run(&env, &["followups", "retry", "--state", "failed"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{} failed", failed.len())), "{out}");
    let after = all_rows(&store).await;
    let by_id: HashMap<i64, &FollowupRow> = after.iter().map(|r| (r.id, r)).collect();
    for r in &failed {
        assert_eq!(by_id[&r.id].state, "scheduled", "{:?}", by_id[&r.id]);
        assert_eq!(by_id[&r.id].attempts, 0);
    }
    for r in &sent {
        let now = by_id[&r.id];
        assert_eq!(
            (now.state.as_str(), &now.message_id, now.sent_at),
            ("sent", &r.message_id, r.sent_at)
        );
    }

    // With the server fixed, the re-queued ones are sent, and no sent one again.
    sink.set_faults(FaultPlan::none());
    let before = sink.count();
    let summary = run_until_idle(&s, &store, Clock::System).await;
    // (Decided at today's date, a re-queued one could now be skipped by a rule.)
    assert_eq!(
        (summary.sent + summary.skipped) as usize,
        failed.len(),
        "{summary:?}"
    );
    assert!(summary.sent > 0, "{summary:?}");
    assert_eq!(sink.count(), before + summary.sent as usize);
    let ids = sink.message_ids();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no Message-ID accepted twice"
    );
    let end = all_rows(&store).await;
    assert_all_final(&end);
    assert!(end.iter().all(|r| r.state != "failed"));
}

/// `smtp.rate_limit` is shared through the database: two workers together stay under
/// it. (A lower bound on spacing: load can only make the run slower.)
#[tokio::test]
async fn the_smtp_rate_limit_holds_across_workers() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let rate = 25;
    let s = settings(&with(
        base_env(&db.url, &sink.url()),
        &[("AFTERCART__SMTP__RATE_LIMIT", "25")],
    ));
    let store = store(&s).await;
    // Enough orders for > 2 × rate messages with the shipped campaigns' picks.
    import_sample(&store, &s, Some(90)).await;
    // Every message waits for its own slot, and slots are spaced `1/rate` apart from
    // the first reservation on; so the k-th arrival can come no earlier than k slots
    // after the start, however the machine delays individual sends.
    let start = std::time::Instant::now();
    let mut runs = Vec::new();
    for i in 0..2 {
        let e = engine(s.clone(), store.clone(), Clock::System).await;
        let mailer = aftercart::app::mailer(&s).await.unwrap();
        let mut opts = RunOptions::new(true);
        opts.name = format!("rate-{i}-{}", opts.name);
        runs.push(tokio::spawn(
            Worker::new(e, mailer, opts).run(std::future::pending()),
        ));
    }
    for r in runs {
        r.await.unwrap().unwrap();
    }
    let mut at: Vec<_> = sink.received().iter().map(|r| r.at).collect();
    at.sort();
    assert!(
        at.len() > 2 * rate,
        "enough messages to see the limit: {}",
        at.len()
    );
    let slot = std::time::Duration::from_millis(1000 / rate as u64);
    for (k, t) in at.iter().enumerate() {
        let earliest = (slot * k as u32).saturating_sub(std::time::Duration::from_millis(10));
        assert!(
            t.duration_since(start) >= earliest,
            "message {k} arrived {:?} after the start, before its slot at {:?}",
            t.duration_since(start),
            slot * k as u32
        );
    }
}
