//! Periodic jobs on apalis-cron: retention compaction keeps every (order, campaign) key,
//! so nothing is sent twice after it, and with two worker processes on one database
//! each tick runs in exactly one of them (SQLite file, or PostgreSQL with
//! `AFTERCART_TEST_DATABASE_URL`).

mod common;

use aftercart::jobs::{Clock, periodic};
use aftercart_testkit::sink::SmtpSink;
use common::process::WorkerProcess;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[tokio::test]
async fn retention_compacts_ended_followups_and_a_replay_sends_nothing() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let env = with(
        base_env(&db.url, &sink.url()),
        &[("AFTERCART__WORKER__RETENTION", "400d")],
    );
    let s = settings(&env);
    let store = store(&s).await;
    import_sample(&store, &s, Some(80)).await;
    let clock = clock_at_first_due(&store).await;
    let first = run_until_idle(&s, &store, clock).await;
    assert!(first.sent > 0, "the sample sends something: {first:?}");
    let before = store.followups(None, None, 1_000_000).await.unwrap();
    assert!(
        before
            .iter()
            .any(|r| r.message_id.is_some() && !r.items.is_empty())
    );

    // 399 days after the first due time nothing is old enough: every row stays as it was.
    // A row ends at or after its due time, so nothing ended before the first due time.
    let first_due = before.iter().map(|r| r.due_at).min().unwrap();
    let latest = before.iter().filter_map(|r| r.sent_at).max().unwrap();
    let young = engine(
        s.clone(),
        store.clone(),
        Clock::manual(first_due.plus(Duration::from_secs(399 * 86_400))),
    )
    .await;
    periodic::run(&young, periodic::PeriodicJob::Maintenance)
        .await
        .unwrap();
    let after_young = store.followups(None, None, 1_000_000).await.unwrap();
    assert_eq!(
        after_young
            .iter()
            .map(|r| (&r.message_id, &r.items))
            .collect::<Vec<_>>(),
        before
            .iter()
            .map(|r| (&r.message_id, &r.items))
            .collect::<Vec<_>>(),
        "nothing younger than the retention is compacted"
    );

    // Ten years on, every ended row is compacted; keys, states and reasons stay.
    let later = engine(
        s.clone(),
        store.clone(),
        Clock::manual(latest.plus(Duration::from_secs(3650 * 86_400))),
    )
    .await;
    periodic::run(&later, periodic::PeriodicJob::Maintenance)
        .await
        .unwrap();
    let after = store.followups(None, None, 1_000_000).await.unwrap();
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(
            (&a.order_id, &a.campaign, &a.state, &a.reason, a.sent_at),
            (&b.order_id, &b.campaign, &b.state, &b.reason, b.sent_at)
        );
        assert!(a.message_id.is_none() && a.items.is_empty(), "{a:?}");
        if a.state == "failed" {
            assert_eq!(a.smtp_reply, b.smtp_reply, "a failure keeps its reason");
        }
    }

    // The same orders imported again schedule nothing and send nothing.
    let received = sink.count();
    import_sample(&store, &s, Some(80)).await;
    assert_eq!(
        store.followups(None, None, 1_000_000).await.unwrap().len(),
        before.len()
    );
    let clock = clock_at_first_due(&store).await;
    let again = run_until_idle(&s, &store, clock).await;
    assert_eq!(again.sent, 0, "{again:?}");
    assert_eq!(sink.count(), received);
}

/// Ticks of the maintenance job a process ran, and those it found taken, from its logs.
fn ticks(w: &WorkerProcess) -> (BTreeSet<i64>, BTreeSet<i64>) {
    let (mut ran, mut skipped) = (BTreeSet::new(), BTreeSet::new());
    for line in w.logs().lines() {
        if !line.contains("job=\"maintenance\"") && !line.contains("job=maintenance") {
            continue;
        }
        let Some(tick) = line.split("tick=").nth(1).and_then(|t| {
            t.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        }) else {
            continue;
        };
        if line.contains("maintenance done") {
            ran.insert(tick);
        } else if line.contains("tick already run by another process") {
            skipped.insert(tick);
        }
    }
    (ran, skipped)
}

/// SIGTERM, then the exit.
async fn stop(w: &mut WorkerProcess) {
    w.signal(libc::SIGTERM);
    let st = w.wait(Duration::from_secs(60)).await;
    assert!(st.is_some(), "worker did not stop\n{}", w.logs());
}

#[tokio::test]
async fn with_two_worker_processes_each_tick_runs_once() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let env = with(
        base_env(&db.url, &sink.url()),
        &[
            ("AFTERCART__WORKER__MAINTENANCE_INTERVAL", "1s"),
            ("AFTERCART_LOG", "warn,aftercart=debug"),
        ],
    );
    let s = settings(&env);
    let store = store(&s).await;
    let mut a = WorkerProcess::spawn(&env);
    let mut b = WorkerProcess::spawn(&env);
    // Until both processes have seen several of the same ticks.
    let both = wait_until(Duration::from_secs(120), || {
        let (ra, sa) = ticks(&a);
        let (rb, sb) = ticks(&b);
        let seen_by_a: BTreeSet<i64> = ra.union(&sa).copied().collect();
        let seen_by_b: BTreeSet<i64> = rb.union(&sb).copied().collect();
        let n = seen_by_a.intersection(&seen_by_b).count();
        async move { n >= 4 }
    })
    .await;
    assert!(
        both,
        "workers did not fire ticks\n{}\n---\n{}",
        a.logs(),
        b.logs()
    );
    stop(&mut a).await;
    stop(&mut b).await;

    let (ran_a, skipped_a) = ticks(&a);
    let (ran_b, skipped_b) = ticks(&b);
    assert!(
        ran_a.is_disjoint(&ran_b),
        "a tick ran twice: {:?}",
        ran_a.intersection(&ran_b).collect::<Vec<_>>()
    );
    // A tick one process found taken was run by the other.
    assert!(skipped_a.is_subset(&ran_b), "{skipped_a:?} ⊄ {ran_b:?}");
    assert!(skipped_b.is_subset(&ran_a), "{skipped_b:?} ⊄ {ran_a:?}");
    assert!(!skipped_a.is_empty() || !skipped_b.is_empty());
    // The ledger of runs agrees with the logs, owner by owner.
    let runs: BTreeMap<i64, String> = store
        .periodic_runs("maintenance")
        .await
        .unwrap()
        .into_iter()
        .collect();
    let ran: BTreeSet<i64> = ran_a.union(&ran_b).copied().collect();
    assert_eq!(runs.keys().copied().collect::<BTreeSet<_>>(), ran);
    let owners_of = |ticks: &BTreeSet<i64>| -> BTreeSet<String> {
        ticks.iter().map(|t| runs[t].clone()).collect()
    };
    let (by_a, by_b) = (owners_of(&ran_a), owners_of(&ran_b));
    assert!(by_a.len() <= 1 && by_b.len() <= 1, "{by_a:?} {by_b:?}");
    assert!(by_a.is_disjoint(&by_b), "{by_a:?} {by_b:?}");
}
