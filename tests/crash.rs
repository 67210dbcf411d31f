//! The real binary (`aftercart worker`) killed, run side by side and stopped, against a
//! real SMTP server in the test process and a real database (SQLite file, or PostgreSQL
//! with `AFTERCART_TEST_DATABASE_URL`). SPEC §6: nothing is lost, a crash resends at most
//! what was in flight (≤ `worker.concurrency`, same Message-ID), several workers never
//! send a follow-up twice, SIGTERM exits 0 and leaves nothing in `sending`.

mod common;

use aftercart::config::Settings;
use aftercart::store::{FollowupRow, FollowupState, Store};
use aftercart_testkit::sink::{FaultPlan, SmtpSink};
use common::process::WorkerProcess;
use common::*;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Safety nets for waiting on other processes; generous because CI runs on 2 busy cores.
const FINISH_TIMEOUT: Duration = Duration::from_secs(180);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings for workers, a store for the test, and the follow-ups: ~1.85 per order.
async fn setup(
    sink: &SmtpSink,
    db: &TestDb,
    extra: &[(&str, &str)],
    orders: usize,
) -> (Vec<(String, String)>, Settings, Store) {
    let env = with(base_env(&db.url, &sink.url()), extra);
    let s = settings(&env);
    let store = store(&s).await;
    import_many(&store, &s, orders).await;
    (env, s, store)
}

async fn all_rows(store: &Store) -> Vec<FollowupRow> {
    store.followups(None, None, 10_000_000).await.unwrap()
}

async fn in_state(store: &Store, state: FollowupState) -> Vec<FollowupRow> {
    store
        .followups(None, Some(state), 10_000_000)
        .await
        .unwrap()
}

fn id_of(s: &Settings, r: &FollowupRow) -> String {
    aftercart::jobs::message_id(&r.order_id, &r.campaign, &s.smtp.from)
}

/// SIGTERM, then the exit code 0 the spec asks for.
async fn stop(w: &mut WorkerProcess) {
    w.stop(EXIT_TIMEOUT).await;
}

async fn wait_all_final(store: &Store, workers: &[&WorkerProcess]) {
    let done = wait_until(FINISH_TIMEOUT, || async { unfinished(store).await == 0 }).await;
    let logs: Vec<String> = workers.iter().map(|w| w.logs()).collect();
    assert!(
        done,
        "follow-ups left unfinished: {:?}\n{}",
        states(store).await,
        logs.join("\n---\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_five_times_loses_nothing_and_resends_at_most_what_was_in_flight() {
    const CONCURRENCY: usize = 8;
    const KILLS: usize = 5;
    let sink = SmtpSink::start().await;
    sink.set_keep_bodies(false);
    // A slow server keeps messages in flight when the kill lands.
    sink.set_delay(Duration::from_millis(10));
    let db = fresh_db().await;
    let (env, s, store) = setup(
        &sink,
        &db,
        &[
            ("AFTERCART__WORKER__CONCURRENCY", "8"),
            ("AFTERCART__WORKER__BATCH_SIZE", "8"),
            ("AFTERCART__SMTP__POOL_SIZE", "8"),
            ("AFTERCART__WORKER__LEASE", "2s"),
        ],
        1_150,
    )
    .await;
    let total = all_rows(&store).await.len();
    assert!(total >= 2_000, "{total} follow-ups");

    let mut rng = rand::thread_rng();
    // Message-IDs of the rows each kill left in `sending`: the only ones a restart may
    // send again.
    let mut in_flight_at_kill: Vec<HashSet<String>> = Vec::new();
    let mut sending_before: HashSet<String> = HashSet::new();
    for kill in 0..KILLS {
        let mut w = WorkerProcess::spawn(&env);
        // A random point: after 1 to total/8 more accepted messages (or at the very
        // start of a run when the worker is still claiming its first batch).
        let more = rng.gen_range(0..total / (2 * KILLS)).max(1);
        let target = sink.count() + more;
        assert!(
            sink.wait_for(target, FINISH_TIMEOUT).await,
            "worker made no progress before kill {kill}\n{}",
            w.logs()
        );
        w.child.kill().unwrap(); // SIGKILL
        w.wait(EXIT_TIMEOUT).await.expect("killed worker exits");

        let sending: HashSet<String> = in_state(&store, FollowupState::Sending)
            .await
            .iter()
            .map(|r| id_of(&s, r))
            .collect();
        // Rows this worker held: the dead process claimed at most `concurrency` at once.
        let new = sending.difference(&sending_before).count();
        assert!(
            new <= CONCURRENCY,
            "kill {kill}: {new} rows in flight > {CONCURRENCY}"
        );
        in_flight_at_kill.push(sending.clone());
        sending_before = sending;
    }

    let mut last = WorkerProcess::spawn(&env);
    wait_all_final(&store, &[&last]).await;
    stop(&mut last).await;

    let rows = all_rows(&store).await;
    assert_eq!(rows.len(), total);
    for r in &rows {
        assert!(
            matches!(r.state.as_str(), "sent" | "skipped" | "failed"),
            "{r:?}"
        );
    }
    let received = sink.message_ids();
    let mut times: HashMap<&str, usize> = HashMap::new();
    for id in &received {
        *times.entry(id.as_str()).or_default() += 1;
    }
    let sent: Vec<&FollowupRow> = rows.iter().filter(|r| r.state == "sent").collect();
    // Three campaigns; many enhance and upgrade follow-ups have nothing to recommend.
    assert!(sent.len() > total / 3, "{} of {total} sent", sent.len());
    let mut known = HashSet::new();
    for r in &sent {
        let id = r.message_id.as_deref().unwrap();
        // The Message-ID is the follow-up's own, whichever process sent it.
        assert_eq!(id, id_of(&s, r), "{r:?}");
        assert!(times.contains_key(id), "sent but never received: {r:?}");
        known.insert(id);
    }
    let in_flight: HashSet<&String> = in_flight_at_kill.iter().flatten().collect();
    let mut repeats = 0;
    for (id, n) in &times {
        // Every message on the server belongs to a follow-up the ledger calls sent,
        // except (rarely) one in flight at a kill that a re-decision then skipped.
        assert!(
            known.contains(id) || in_flight.contains(&id.to_string()),
            "{id} received but its follow-up is not sent"
        );
        if *n > 1 {
            assert!(
                in_flight.contains(&id.to_string()),
                "{id} received {n} times but was in flight at no kill"
            );
            repeats += n - 1;
        }
    }
    eprintln!(
        "{total} follow-ups, {} sent, {} received, {repeats} repeats; in flight at each kill: {:?}",
        sent.len(),
        received.len(),
        in_flight_at_kill
            .iter()
            .map(HashSet::len)
            .collect::<Vec<_>>()
    );
    assert!(
        repeats <= KILLS * CONCURRENCY,
        "{repeats} repeats after {KILLS} kills of a worker with concurrency {CONCURRENCY}"
    );
}

/// `n` worker processes on one database: each sent follow-up reaches the server once.
async fn workers_side_by_side_send_each_followup_once(n: usize) {
    let sink = SmtpSink::start().await;
    sink.set_keep_bodies(false);
    let db = fresh_db().await;
    let (env, s, store) = setup(
        &sink,
        &db,
        &[("AFTERCART__WORKER__CONCURRENCY", "16")],
        1_700,
    )
    .await;
    let total = all_rows(&store).await.len();
    assert!(total >= 3_000, "{total} follow-ups");

    let mut workers: Vec<WorkerProcess> = (0..n).map(|_| WorkerProcess::spawn(&env)).collect();
    let pids: HashSet<i64> = workers.iter().map(|w| w.pid() as i64).collect();

    // While they run, `status --json` lists each of them as a live worker.
    let live = wait_until(EXIT_TIMEOUT, || async {
        let (code, out, _) = run(&env, &["status", "--json"]);
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let listed: HashSet<i64> = doc["workers"]
            .as_array()
            .map(|a| a.iter().filter_map(|w| w["pid"].as_i64()).collect())
            .unwrap_or_default();
        code == 0 && pids.is_subset(&listed)
    })
    .await;
    assert!(live, "status --json never listed all {n} workers");

    let refs: Vec<&WorkerProcess> = workers.iter().collect();
    wait_all_final(&store, &refs).await;
    for w in &mut workers {
        stop(w).await;
    }
    let (_, out, _) = run(&env, &["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["workers"].as_array().map(Vec::len), Some(0), "{doc}");
    assert_eq!(doc["followups"]["sending"], 0);

    let sent = in_state(&store, FollowupState::Sent).await;
    let received = sink.message_ids();
    let distinct: HashSet<&String> = received.iter().collect();
    assert_eq!(received.len(), sent.len(), "received == sent rows");
    assert_eq!(
        distinct.len(),
        received.len(),
        "no Message-ID received twice"
    );
    for r in &sent {
        assert!(distinct.contains(&id_of(&s, r)), "{r:?}");
    }
    // Three campaigns; many enhance and upgrade follow-ups have nothing to recommend.
    assert!(sent.len() > total / 3, "{} of {total} sent", sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_database_send_each_followup_once() {
    workers_side_by_side_send_each_followup_once(2).await;
}

/// Three processes: on PostgreSQL when `AFTERCART_TEST_DATABASE_URL` is set (its SKIP
/// LOCKED claims), else on the SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_one_database_send_each_followup_once() {
    workers_side_by_side_send_each_followup_once(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_jobs_in_flight_and_exits_0() {
    let sink = SmtpSink::start().await;
    sink.set_keep_bodies(false);
    sink.set_delay(Duration::from_millis(30));
    let db = fresh_db().await;
    let (env, _s, store) = setup(
        &sink,
        &db,
        &[
            ("AFTERCART__WORKER__CONCURRENCY", "8"),
            ("AFTERCART__WORKER__SHUTDOWN_TIMEOUT", "10s"),
        ],
        400,
    )
    .await;
    let mut w = WorkerProcess::spawn(&env);
    assert!(sink.wait_for(50, FINISH_TIMEOUT).await, "{}", w.logs());
    stop(&mut w).await;

    let st = states(&store).await;
    assert_eq!(st["sending"], 0, "{st:?}");
    // It stopped mid-run: the rest waits in the queue for the next worker.
    assert!(st["scheduled"] > 0, "{st:?}");
    // Every message the server accepted is recorded as sent: the in-flight ones finished.
    assert_eq!(st["sent"] as usize, sink.count(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_server_hands_jobs_back_after_the_shutdown_timeout() {
    let sink = SmtpSink::start().await;
    sink.set_keep_bodies(false);
    let db = fresh_db().await;
    let (env, _s, store) = setup(
        &sink,
        &db,
        &[
            ("AFTERCART__WORKER__CONCURRENCY", "4"),
            ("AFTERCART__WORKER__SHUTDOWN_TIMEOUT", "1s"),
            // Far longer than the shutdown timeout: the sends cannot finish in time.
            ("AFTERCART__SMTP__TIMEOUT", "5m"),
        ],
        50,
    )
    .await;
    sink.set_faults(FaultPlan::stall_first(usize::MAX));
    let mut w = WorkerProcess::spawn(&env);
    let stuck = wait_until(EXIT_TIMEOUT, || async {
        states(&store).await["sending"] > 0
    })
    .await;
    assert!(stuck, "{}", w.logs());
    stop(&mut w).await;

    let st = states(&store).await;
    assert_eq!(st["sending"], 0, "{st:?}");
    assert_eq!(st["sent"], 0, "{st:?}");
    // Handed back, not counted as an attempt: the next worker starts afresh.
    for r in in_state(&store, FollowupState::Scheduled).await {
        assert_eq!(r.attempts, 0, "{r:?}");
    }
}
