//! The send loop on apalis: an idle worker notices newly due work within its poll
//! interval (apalis 1.0's own poll strategies do not re-arm after an empty fetch and
//! would wait for the 30 s heartbeat), and it stops on request with nothing held.

mod common;

use aftercart::jobs::{Clock, RunOptions, Worker};
use aftercart_testkit::sink::SmtpSink;
use common::*;
use std::time::{Duration, Instant};

/// The bound asked for is poll_interval + 1 s; the extra seconds are headroom for a busy
/// CI machine, far below the 30 s an un-re-armed poll would take.
const POLL: Duration = Duration::from_secs(1);
const HEADROOM: Duration = Duration::from_secs(4);

#[tokio::test]
async fn an_idle_worker_sends_newly_due_work_within_its_poll_interval() {
    let sink = SmtpSink::start().await;
    let db = fresh_db().await;
    let env = with(
        base_env(&db.url, &sink.url()),
        &[("AFTERCART__WORKER__POLL_INTERVAL", "1s")],
    );
    let s = settings(&env);
    let store = store(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("customers.jsonl");
    write_consenting_customers(&customers);
    import(&store, &s, "products", &sample("products.jsonl")).await;
    import(&store, &s, "customers", &customers).await;

    let mailer = aftercart::app::mailer(&s).await.unwrap();
    let e = engine(s.clone(), store.clone(), Clock::System).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(e, mailer, RunOptions::new(false)).run(async {
        let _ = stop_rx.await;
    }));
    // Several empty polls go by: the worker is idle, waiting.
    tokio::time::sleep(3 * POLL).await;
    assert_eq!(sink.count(), 0);

    // Orders from the sample's past: their first follow-ups are due at once.
    let orders = dir.path().join("orders.jsonl");
    write_orders(&orders, 5);
    import(&store, &s, "orders", &orders).await;
    let due = Instant::now();
    assert!(
        sink.wait_for(1, POLL + HEADROOM).await,
        "nothing sent {:?} after work fell due",
        due.elapsed()
    );
    eprintln!("idle pickup: first email {:?} after import", due.elapsed());

    let stopping = Instant::now();
    stop_tx.send(()).unwrap();
    let summary = worker.await.unwrap().unwrap();
    eprintln!("stopped in {:?}", stopping.elapsed());
    assert!(summary.sent >= 1, "{summary:?}");
    assert_eq!(
        states(&store).await["sending"],
        0,
        "nothing held after stop"
    );
}
