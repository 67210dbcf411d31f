//! Relay faults are not the recipients' fault (issue 10, cases 1–3), against the real SMTP
//! sink over TCP, the real worker and a real database (SQLite file, or PostgreSQL with
//! `AFTERCART_TEST_DATABASE_URL`):
//!
//! - a refused sender (553 5.1.8 at MAIL FROM) or refused relaying (at RCPT) suppresses
//!   nobody and fails nothing: sending pauses, and resumes once the relay is fixed;
//! - an outage (421 at the greeting) pauses the worker, which probes with backoff instead
//!   of burning every message's attempts, and `status` says so;
//! - a slow reply to the final dot is waited for (`smtp.data_timeout`), and a reply that
//!   never comes is an "unknown" outcome, resent once after the lease, never blindly.
//!
//! Breaker probes run on real time (the relay is real) with a 100 ms base in these tests;
//! waits are on conditions, never on fixed sleeps.

mod common;

use aftercart::config::Settings;
use aftercart::jobs::{Clock, RunOptions, RunSummary, Worker};
use aftercart::store::{FollowupRow, Store, StoreError};
use aftercart_testkit::sink::{Fault, FaultPlan, SessionFaults, SmtpSink};
use common::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Safety net for conditions that depend on the worker; generous for a loaded 2-core CI.
const WAIT: Duration = Duration::from_secs(120);

/// Fast probes, so an outage of a few probes costs a second, not minutes.
const PROBES: [(&str, &str); 2] = [
    ("AFTERCART__SMTP__PROBE_BASE", "100ms"),
    ("AFTERCART__SMTP__PROBE_MAX", "1s"),
];

async fn all_rows(store: &Store) -> Vec<FollowupRow> {
    store.followups(None, None, 1_000_000).await.unwrap()
}

/// The first 500 sample orders, the i-th given to customer i+1, every customer
/// consenting: each of the 500 customers has follow-ups due now.
async fn import_one_order_per_customer(store: &Store, s: &Settings) {
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("customers.jsonl");
    write_consenting_customers(&customers);
    let orders = dir.path().join("orders.jsonl");
    let text = std::fs::read_to_string(sample("orders.jsonl")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .take(500)
        .enumerate()
        .map(|(i, l)| {
            let mut o: serde_json::Value = serde_json::from_str(l).unwrap();
            o["customer_id"] = format!("C{:06}", i + 1).into();
            o.to_string()
        })
        .collect();
    std::fs::write(&orders, lines.join("\n")).unwrap();
    import(store, s, "products", &sample("products.jsonl")).await;
    import(store, s, "customers", &customers).await;
    import(store, s, "events", &sample("events.jsonl")).await;
    import(store, s, "orders", &orders).await;
}

/// An in-process worker on the system clock, stopped by `stop` (or idle, with
/// `until_idle`).
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<RunSummary, StoreError>>,
}

async fn start_worker(s: &Settings, store: &Store, until_idle: bool) -> Running {
    let e = engine(s.clone(), store.clone(), Clock::System).await;
    let mailer = aftercart::app::mailer(s).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        Worker::new(e, mailer, RunOptions::new(until_idle))
            .run(async {
                let _ = rx.await;
            })
            .await
    });
    Running {
        stop: Some(tx),
        handle,
    }
}

impl Running {
    async fn stop(mut self) -> RunSummary {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.finish().await
    }

    async fn finish(self) -> RunSummary {
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("worker ends")
            .unwrap()
            .unwrap()
    }
}

/// `status --json` from the binary.
async fn status_json(env: &[(String, String)]) -> serde_json::Value {
    let env = env.to_vec();
    let (code, out, err) = tokio::task::spawn_blocking(move || run(&env, &["status", "--json"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

async fn status_text(env: &[(String, String)]) -> String {
    let env = env.to_vec();
    let (code, out, err) = tokio::task::spawn_blocking(move || run(&env, &["status"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    out
}

/// True once `status --json` shows a live worker paused for a reason containing `why`.
async fn shows_paused(env: &[(String, String)], why: &str) -> bool {
    let st = status_json(env).await;
    st["relay"] == "paused"
        && st["workers"].as_array().unwrap().iter().any(|w| {
            w["relay_paused"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(why))
        })
}

/// Settings for the outage tests: fast probes, 16 follow-ups in hand at most.
fn outage_env(db: &TestDb, sink: &SmtpSink) -> Vec<(String, String)> {
    with(
        base_env(&db.url, &sink.url()),
        &[&PROBES[..], &[("AFTERCART__WORKER__CONCURRENCY", "16")]].concat(),
    )
}

/// Lives through an outage while `tries` (what the relay saw) grows: waits until `status`
/// shows the worker paused for `why`, then for three more probes, and checks that
/// nothing was burnt and the text status says why. Returns `tries()` at the end.
async fn ride_out_outage(
    env: &[(String, String)],
    store: &Store,
    tries: impl Fn() -> usize,
    why: &str,
) -> usize {
    assert!(
        wait_until(WAIT, || async {
            tries() >= 4 && shows_paused(env, why).await
        })
        .await,
        "the relay never showed as paused: {:?}",
        status_json(env).await
    );
    let seen = tries();
    assert!(wait_until(WAIT, || async { tries() >= seen + 3 }).await);
    assert_nothing_burnt(store).await;
    let text = status_text(env).await;
    assert!(
        text.contains("relay: PAUSED") && text.contains(why),
        "{text}"
    );
    tries()
}

/// During an outage: nothing failed, nobody suppressed, and every queued follow-up still
/// has all its attempts.
async fn assert_nothing_burnt(store: &Store) {
    let rows = all_rows(store).await;
    assert!(
        rows.iter().all(|r| r.state != "failed"),
        "a follow-up failed"
    );
    for r in rows.iter().filter(|r| r.state == "scheduled") {
        assert_eq!(r.attempts, 0, "an attempt was counted: {r:?}");
    }
    assert!(
        rows.iter()
            .all(|r| r.reason.as_deref() != Some("suppressed")),
        "skipped as suppressed"
    );
    assert!(store.suppressions().await.unwrap().is_empty(), "suppressed");
}

/// After recovery: every follow-up final, none failed, each sent one accepted exactly
/// once with one counted attempt. Returns how many were sent.
fn assert_all_delivered_once(sink: &SmtpSink, rows: &[FollowupRow]) -> usize {
    let received = sink.message_ids();
    let distinct: HashSet<&String> = received.iter().collect();
    assert_eq!(
        distinct.len(),
        received.len(),
        "a Message-ID accepted twice"
    );
    let sent: Vec<&FollowupRow> = rows.iter().filter(|r| r.state == "sent").collect();
    assert_eq!(
        sent.len(),
        received.len(),
        "one accepted message per sent row"
    );
    for r in rows {
        assert!(
            matches!(r.state.as_str(), "sent" | "skipped"),
            "not delivered: {r:?}"
        );
        assert_ne!(r.reason.as_deref(), Some("suppressed"), "{r:?}");
    }
    for r in &sent {
        let id = r.message_id.as_deref().unwrap();
        assert!(distinct.contains(&id.to_owned()), "{r:?}");
        assert_eq!(
            r.attempts, 1,
            "only the delivery counts as an attempt: {r:?}"
        );
        assert!(r.smtp_reply.as_deref().unwrap().starts_with("250"), "{r:?}");
    }
    sent.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_refused_at_mail_from_suppresses_nobody_and_all_goes_out_once_fixed() {
    let sink = SmtpSink::start().await;
    sink.set_keep_bodies(false);
    let refusal =
        "553 5.1.8 <hello@northwind.example.com>: Sender address rejected: Domain not found";
    sink.set_session_faults(SessionFaults {
        mail: Some(refusal.into()),
        ..SessionFaults::default()
    });
    let db = fresh_db().await;
    let env = outage_env(&db, &sink);
    let s = settings(&env);
    let store = store(&s).await;
    import_one_order_per_customer(&store, &s).await;
    let due = all_rows(&store).await.len();

    let worker = start_worker(&s, &store, true).await;
    let during_outage = ride_out_outage(&env, &store, || sink.mail_commands(), refusal).await;

    sink.set_session_faults(SessionFaults::default());
    let summary = worker.finish().await;
    let rows = all_rows(&store).await;
    let sent = assert_all_delivered_once(&sink, &rows);
    assert!(sent > 300, "{summary:?}");
    assert!(store.suppressions().await.unwrap().is_empty());
    // The worker paused instead of trying (and handing back) message after message.
    assert!(
        during_outage < 60 && due > 800,
        "{during_outage} tries at MAIL FROM for {due} follow-ups"
    );
    assert!(
        summary.held_back as usize <= 2 * 16 + during_outage,
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_at_the_greeting_pauses_and_probes_and_burns_no_attempts() {
    let sink = SmtpSink::start().await;
    sink.set_keep_bodies(false);
    sink.set_session_faults(SessionFaults {
        greeting: Some("421 4.3.2 Service not available, closing channel".into()),
        ..SessionFaults::default()
    });
    let db = fresh_db().await;
    let env = outage_env(&db, &sink);
    let s = settings(&env);
    let store = store(&s).await;
    import_many(&store, &s, 300).await;
    let due = all_rows(&store).await.len();

    let worker = start_worker(&s, &store, false).await;
    ride_out_outage(&env, &store, || sink.connections(), "421 4.3.2").await;
    let st = status_json(&env).await;
    let w = &st["workers"][0];
    assert!(
        w["relay_paused"]["failed_probes"].as_i64().unwrap() >= 3,
        "{st}"
    );
    assert!(w["relay_paused"]["since"].is_string(), "{st}");
    assert!(w["relay_paused"]["next_probe_at"].is_string(), "{st}");
    let during_outage = sink.connections();

    sink.set_session_faults(SessionFaults::default());
    assert!(
        wait_until(WAIT, || async { unfinished(&store).await == 0 }).await,
        "{:?}",
        states(&store).await
    );
    // Back up: the registry row no longer says paused.
    let st = status_json(&env).await;
    assert_eq!(st["relay"], "ok", "{st}");
    assert!(st["workers"][0]["relay_paused"].is_null(), "{st}");
    let summary = worker.stop().await;

    let rows = all_rows(&store).await;
    let sent = assert_all_delivered_once(&sink, &rows);
    assert!(sent > 100, "{summary:?}");
    // A bounded number of connection attempts (the warm-up and one per probe), far
    // fewer than the messages due; each probe handed back one follow-up.
    assert!(
        during_outage < 40 && due > 400,
        "{during_outage} connections for {due} follow-ups"
    );
    assert!(
        summary.held_back as usize <= 2 * 16 + during_outage,
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_refused_at_rcpt_suppresses_nobody_but_a_5_1_1_at_rcpt_does() {
    let sink = SmtpSink::start().await;
    sink.set_session_faults(SessionFaults::rcpt(|_| {
        Some("554 5.7.1 <x@mail.example.com>: Relay access denied".into())
    }));
    let db = fresh_db().await;
    let env = with(base_env(&db.url, &sink.url()), &PROBES);
    let s = settings(&env);
    let store = store(&s).await;
    import_many(&store, &s, 100).await;

    let worker = start_worker(&s, &store, true).await;
    assert!(
        wait_until(WAIT, || async {
            sink.mail_commands() >= 3 && shows_paused(&env, "Relay access denied").await
        })
        .await
    );
    assert_nothing_burnt(&store).await;

    // The relay fixed, a few mailboxes turn out not to exist: only those are suppressed.
    let mut gone: HashSet<String> = HashSet::new();
    for r in all_rows(&store).await.iter().take(40) {
        let c = store.customer(&r.customer_id).await.unwrap().unwrap();
        gone.insert(c.customer.email.as_str().to_lowercase());
    }
    let refused = gone.clone();
    sink.set_session_faults(SessionFaults::rcpt(move |addr| {
        refused
            .contains(&addr.to_lowercase())
            .then(|| "550 5.1.1 Recipient address rejected: User unknown".to_string())
    }));
    worker.finish().await;
    let rows = all_rows(&store).await;
    let mut bounced = HashSet::new();
    for r in rows.iter().filter(|r| r.state == "failed") {
        assert_eq!(
            r.smtp_reply.as_deref(),
            Some("550 5.1.1 Recipient address rejected: User unknown"),
            "{r:?}"
        );
        assert_eq!(r.attempts, 1, "{r:?}");
        let c = store.customer(&r.customer_id).await.unwrap().unwrap();
        bounced.insert(c.customer.email.as_str().to_lowercase());
    }
    assert!(!bounced.is_empty());
    assert!(bounced.is_subset(&gone));
    let suppressed: HashSet<String> = store
        .suppressions()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.email)
        .collect();
    assert_eq!(suppressed, bounced, "exactly the bounced addresses");
    let ids = sink.message_ids();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    for r in rows.iter().filter(|r| r.state != "failed") {
        assert!(matches!(r.state.as_str(), "sent" | "skipped"), "{r:?}");
        if r.state == "sent" {
            assert_eq!(r.attempts, 1, "{r:?}");
        }
    }
}

#[tokio::test]
async fn a_451_at_rcpt_is_still_a_per_message_retry() {
    let sink = SmtpSink::start().await;
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let t = tries.clone();
    sink.set_session_faults(SessionFaults::rcpt(move |addr| {
        let mut t = t.lock().unwrap();
        let n = t.entry(addr.to_owned()).or_default();
        *n += 1;
        (*n == 1).then(|| "451 4.3.0 mailbox busy, try again later".to_string())
    }));
    let db = fresh_db().await;
    let s = settings(&with(base_env(&db.url, &sink.url()), &PROBES));
    let store = store(&s).await;
    import_sample(&store, &s, Some(60)).await;

    let summary = run_until_idle(&s, &store, clock_at_first_due(&store).await).await;
    assert_eq!(summary.held_back, 0, "the relay never paused: {summary:?}");
    assert!(summary.retried > 0, "{summary:?}");
    let rows = all_rows(&store).await;
    let sent: Vec<&FollowupRow> = rows.iter().filter(|r| r.state == "sent").collect();
    assert!(!sent.is_empty());
    assert!(rows.iter().all(|r| r.state != "failed"));
    let ids = sink.message_ids();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert_eq!(ids.len(), sent.len());
    // Each customer's first RCPT was refused once: that message took two attempts.
    assert!(sent.iter().any(|r| r.attempts == 2), "{sent:?}");
}

/// Case 3: the relay answers the final dot after 3 s, longer than `smtp.timeout` (1 s)
/// and the lease (3 s). Every message is delivered once and every row ends `sent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_slow_to_answer_the_dot_gets_each_message_once_and_every_row_sent() {
    let sink = SmtpSink::start().await;
    sink.set_delay(Duration::from_secs(3));
    let db = fresh_db().await;
    let s = settings(&with(
        base_env(&db.url, &sink.url()),
        &[
            ("AFTERCART__SMTP__TIMEOUT", "1s"),
            ("AFTERCART__SMTP__POOL_SIZE", "32"),
            ("AFTERCART__WORKER__CONCURRENCY", "32"),
            ("AFTERCART__WORKER__BATCH_SIZE", "32"),
        ],
    ));
    let store = store(&s).await;
    import_sample(&store, &s, Some(40)).await;

    start_worker(&s, &store, true).await.finish().await;
    let rows = all_rows(&store).await;
    let sent = assert_all_delivered_once(&sink, &rows);
    assert!(sent > 10, "{sent}");
    for r in rows.iter().filter(|r| r.state == "sent") {
        assert_eq!(sink.attempts(r.message_id.as_deref().unwrap()), 1, "{r:?}");
    }
}

/// Case 3: a relay that never answers the dot. The outcome is unknown: no resend before
/// the lease has passed (1 h here), then one resend with the same Message-ID, then
/// `failed` with an `unknown:` reply; `followups retry` re-queues them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_never_answered_is_unknown_resent_once_after_the_lease_then_failed() {
    let sink = SmtpSink::start().await;
    sink.set_faults(FaultPlan::custom(|_, _| Fault::Stall));
    let db = fresh_db().await;
    let env = with(
        base_env(&db.url, &sink.url()),
        &[
            ("AFTERCART__SMTP__DATA_TIMEOUT", "300ms"),
            ("AFTERCART__SMTP__POOL_SIZE", "16"),
            ("AFTERCART__WORKER__LEASE", "1h"),
        ],
    );
    let s = settings(&env);
    let store = store(&s).await;
    import_sample(&store, &s, Some(40)).await;
    let started = aftercart::domain::Timestamp::now();

    // First attempts: each ends scheduled an hour later with an `unknown:` reply.
    let unknown = |r: &FollowupRow| {
        r.smtp_reply
            .as_deref()
            .is_some_and(|x| x.starts_with("unknown:"))
    };
    let worker = start_worker(&s, &store, false).await;
    assert!(
        wait_until(WAIT, || async {
            all_rows(&store).await.iter().all(|r| {
                matches!(r.state.as_str(), "sent" | "skipped" | "failed")
                    || (r.state == "scheduled" && unknown(r))
            })
        })
        .await,
        "{:?}",
        states(&store).await
    );
    worker.stop().await;
    let waiting: Vec<FollowupRow> = all_rows(&store)
        .await
        .into_iter()
        .filter(|r| r.state == "scheduled")
        .collect();
    assert!(waiting.len() > 10, "{}", waiting.len());
    for r in &waiting {
        assert_eq!(r.attempts, 1, "{r:?}");
        assert!(
            r.next_at.unwrap().0 >= started.0 + 3_600_000,
            "resent before the lease: {r:?}"
        );
        let id = aftercart::jobs::message_id(&r.order_id, &r.campaign, &s.smtp.from);
        assert_eq!(sink.attempts(&id), 1, "{r:?}");
    }
    assert_eq!(sink.count(), 0);

    // An hour later (manual clock): one resend each, unknown again, so failed.
    run_until_idle(&s, &store, clock_at_first_due(&store).await).await;
    let by_id: HashMap<i64, FollowupRow> = all_rows(&store)
        .await
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    for w in &waiting {
        let r = &by_id[&w.id];
        assert_eq!(r.state, "failed", "{r:?}");
        assert!(unknown(r), "{r:?}");
        assert_eq!(r.attempts, 2, "{r:?}");
        let id = aftercart::jobs::message_id(&r.order_id, &r.campaign, &s.smtp.from);
        assert_eq!(sink.attempts(&id), 2, "sent exactly twice: {r:?}");
    }
    assert!(store.suppressions().await.unwrap().is_empty());

    // An operator who checked the relay re-queues them; with the relay answering they
    // go out (or are skipped by a rule decided today), none twice more.
    let (code, out, err) = run(&env, &["followups", "retry", "--state", "failed"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{} failed", waiting.len())), "{out}");
    sink.set_faults(FaultPlan::none());
    run_until_idle(&s, &store, Clock::System).await;
    let ids = sink.message_ids();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    for w in &waiting {
        let r = store.followups(Some(&w.order_id), None, 10).await.unwrap();
        let r = r.iter().find(|r| r.id == w.id).unwrap();
        assert!(matches!(r.state.as_str(), "sent" | "skipped"), "{r:?}");
    }
}
