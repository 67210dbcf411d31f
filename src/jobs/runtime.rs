//! The send loop on apalis 1.0: an apalis worker whose backend is the follow-up ledger,
//! run by an apalis `Monitor`.
//!
//! - Backend ([`LedgerBackend`]): `poll_next` hands out jobs from batches claimed by
//!   [`Claimer::next_batch`]: due rows taken in one statement with a lease (SQLite
//!   `UPDATE … RETURNING`, PostgreSQL `FOR UPDATE SKIP LOCKED`), read in one go, and cut
//!   into one job per customer. Only as many rows are claimed as there are free permits
//!   (`worker.concurrency`), and a row's permit is released only after its outcome is
//!   committed, so a kill -9 resends at most `concurrency` messages. When nothing is due
//!   it waits `worker.poll_interval` (re-armed each time) or until a job finishes, so an
//!   idle worker picks new work within one poll interval.
//! - Jobs run on apalis with `.concurrency`, `.catch_panic`, tracing, and
//!   `.parallelize` onto tokio tasks, so rendering uses every core; the tasks are tracked
//!   so that none outlives the hand-back at shutdown.
//! - Outcomes are written by the worker's ledger writer in batched statements; apalis
//!   acknowledges nothing itself (the ledger row's state is the truth, and durable retries
//!   with backoff are ledger times, not in-memory retries).
//! - `Monitor::run_with_signal` with `shutdown_timeout`: on SIGINT/SIGTERM apalis stops
//!   asking the backend for work and drains the jobs in flight; what is left when the
//!   timeout runs out is aborted, and the caller hands every row still held back.

use super::Stage;
use super::compose::Engine;
use super::worker::{Handler, Held, RelayReport, lock};
use crate::mail::Mailer;
use crate::mail::relay::RelayState;
use crate::store::{Claimed, History, OrderContext};
use apalis::prelude::{
    BoxDynError, Data, Monitor, ParallelizeExt, WorkerBuilder, WorkerBuilderExt,
};
use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::layers::Identity;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::warn;

/// One job: a customer's rows of a claimed batch, each with its permit, and what the
/// batch read for them (None when that read failed: the rows are retried).
pub struct Group {
    pub rows: Vec<(Claimed, OwnedSemaphorePermit)>,
    pub history: Option<History>,
    pub orders: Option<Vec<Option<OrderContext>>>,
}

/// Claims batches from the ledger for one worker process.
#[derive(Clone)]
pub struct Claimer {
    engine: Engine,
    mailer: Arc<Mailer>,
    owner: String,
    until_idle: bool,
    held_rows: Held,
    permits: Arc<Semaphore>,
    /// Woken when a job finishes (a permit came back).
    finished: Arc<Notify>,
    relay_report: Arc<tokio::sync::Mutex<RelayReport>>,
}

impl Claimer {
    pub fn new(
        engine: Engine,
        mailer: Arc<Mailer>,
        owner: String,
        until_idle: bool,
        held_rows: Held,
    ) -> Claimer {
        let permits = Arc::new(Semaphore::new(engine.settings.worker.concurrency));
        Claimer {
            engine,
            mailer,
            owner,
            until_idle,
            held_rows,
            permits,
            finished: Arc::new(Notify::new()),
            relay_report: Arc::default(),
        }
    }

    fn in_flight(&self) -> bool {
        self.permits.available_permits() < self.engine.settings.worker.concurrency
    }

    /// The next batch, as jobs; None when `until_idle` and nothing is left to do.
    /// Store errors are logged and retried: a database that is away for a while must
    /// not stop the worker.
    pub async fn next_batch(&self) -> Option<Vec<Group>> {
        let e = &self.engine;
        let s = &e.settings.worker;
        loop {
            // While the relay is paused nothing is claimed (claiming only to hand back
            // would churn the ledger), except one follow-up as the probe once it is due
            // and everything in hand has come back.
            let relay = self.mailer.relay_state();
            self.relay_report
                .lock()
                .await
                .update(&e.store, &self.owner, &relay)
                .await;
            let mut want = s.batch_size.min(s.concurrency);
            if let RelayState::Paused {
                next_probe_in,
                probing,
                ..
            } = &relay
            {
                let busy = self.in_flight();
                if busy || *probing || !next_probe_in.is_zero() {
                    let wait = if !busy && !*probing {
                        *next_probe_in
                    } else {
                        s.poll_interval
                    };
                    self.wait(wait).await;
                    continue;
                }
                want = 1;
            }
            // Claim only as many rows as there are free permits, so nothing claimed
            // waits long and in-flight work stays bounded.
            let first = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .expect("semaphore open");
            let mut held = vec![first];
            for round in 0..2 {
                while held.len() < want {
                    match Arc::clone(&self.permits).try_acquire_owned() {
                        Ok(p) => held.push(p),
                        Err(_) => break,
                    }
                }
                // Under load permits come back one by one; a moment's wait keeps
                // batches (and their shared reads) large.
                if round == 0 && held.len() < want / 2 && self.in_flight() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let now = e.clock.now();
            let started = std::time::Instant::now();
            let claimed = e
                .store
                .claim_due(&self.owner, now, now.plus(s.lease), held.len())
                .await;
            e.stages.since(Stage::Claim, started);
            let claimed = match claimed {
                Ok(c) => c,
                Err(err) => {
                    warn!(error = %err, "claim failed; retrying");
                    drop(held);
                    tokio::time::sleep(s.poll_interval.max(Duration::from_millis(200))).await;
                    continue;
                }
            };
            if claimed.is_empty() {
                drop(held);
                if self.until_idle && !self.in_flight() {
                    match e.store.next_wakeup().await {
                        Ok(None) => return None,
                        Ok(Some(t)) if e.clock.is_manual() => {
                            e.clock.advance_to(t);
                            continue;
                        }
                        Ok(Some(_)) => {}
                        Err(err) => warn!(error = %err, "could not read the next due time"),
                    }
                }
                self.wait(s.poll_interval).await;
                continue;
            }
            held.truncate(claimed.len());
            lock(&self.held_rows).extend(claimed.iter().map(|c| c.id));
            // One read for the whole batch; a failed read hands the rows back soon.
            let ids: Vec<&str> = claimed.iter().map(|c| c.order_id.as_str()).collect();
            let started = std::time::Instant::now();
            let loaded = e.load(&ids, now).await;
            e.stages.since(Stage::Decide, started);
            let mut loaded = match loaded {
                Ok(l) => Some(l),
                Err(err) => {
                    warn!(error = %err, "could not read the batch; retrying later");
                    None
                }
            };
            let mut by_customer: BTreeMap<
                crate::domain::CustomerId,
                Vec<(Claimed, OwnedSemaphorePermit)>,
            > = BTreeMap::new();
            for (c, p) in claimed.into_iter().zip(held) {
                by_customer
                    .entry(c.customer_id.clone())
                    .or_default()
                    .push((c, p));
            }
            let groups = by_customer
                .into_iter()
                .map(|(customer, rows)| {
                    let (history, orders) = match loaded.as_mut() {
                        Some(l) => (
                            l.histories.remove(customer.as_str()),
                            Some(
                                rows.iter()
                                    .map(|(c, _)| l.orders.get(c.order_id.as_str()).cloned())
                                    .collect(),
                            ),
                        ),
                        None => (None, None),
                    };
                    Group {
                        rows,
                        history,
                        orders,
                    }
                })
                .collect();
            return Some(groups);
        }
    }

    /// Sleeps `d`, or less when a job finishes meanwhile.
    async fn wait(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.finished.notified() => {}
        }
    }
}

type BatchFuture = Pin<Box<dyn Future<Output = Option<Vec<Group>>> + Send>>;

/// apalis's view of the ledger: a stream of jobs, fed batch by batch.
pub struct LedgerBackend {
    claimer: Claimer,
    ready: VecDeque<Group>,
    pending: Option<BatchFuture>,
    exhausted: bool,
}

impl LedgerBackend {
    pub fn new(claimer: Claimer) -> LedgerBackend {
        LedgerBackend {
            claimer,
            ready: VecDeque::new(),
            pending: None,
            exhausted: false,
        }
    }
}

impl Backend for LedgerBackend {
    type Task = Task<Group>;
    type Error = std::convert::Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            if let Some(g) = self.ready.pop_front() {
                // The job's id is its first follow-up's ledger id (tracing shows it).
                let id = g.rows.first().map_or(0, |(c, _)| c.id as u64);
                let task = TaskBuilder::new(g).task_id(TaskId::Int(id)).build();
                return Poll::Ready(Some(Ok(task)));
            }
            if self.exhausted {
                return Poll::Ready(None);
            }
            let claimer = self.claimer.clone();
            let fut = self
                .pending
                .get_or_insert_with(|| Box::pin(async move { claimer.next_batch().await }));
            match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.pending = None;
                    self.exhausted = true;
                    // apalis waits for a stop request before it ends a worker whose
                    // stream ran dry: nothing left (`until_idle`) is that request.
                    let _ = worker.stop();
                }
                Poll::Ready(Some(groups)) => {
                    self.pending = None;
                    self.ready.extend(groups);
                }
            }
        }
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        // Claimed jobs never handed out go back with the caller's hand-back of held rows.
        self.pending = None;
        self.ready.clear();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for LedgerBackend {
    type Args = Group;
    type Id = i64;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}

/// The tokio tasks the jobs run on: counted, so the worker can wait for the last one,
/// and abortable, so none survives the hand-back at shutdown.
#[derive(Clone, Default)]
struct Tasks {
    handles: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    live: Arc<AtomicUsize>,
    ended: Arc<Notify>,
}

/// Counts a task as live until dropped (finished or aborted).
struct Live(Tasks);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

impl Tasks {
    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.live.fetch_add(1, Ordering::SeqCst);
        let live = Live(self.clone());
        let handle = tokio::spawn(async move {
            let _live = live;
            fut.await
        });
        let mut handles = lock(&self.handles);
        handles.retain(|h| !h.is_finished());
        handles.push(handle.abort_handle());
        handle
    }

    /// Aborts what still runs and waits until every task has ended.
    async fn abort_and_wait(&self) {
        for h in lock(&self.handles).drain(..) {
            h.abort();
        }
        loop {
            let ended = self.ended.notified();
            if self.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), ended).await;
        }
    }
}

/// A job, as apalis calls it.
async fn run_job(group: Group, ctx: Data<Job>) -> Result<(), BoxDynError> {
    ctx.handler.run(group).await;
    ctx.finished.notify_one();
    Ok(())
}

#[derive(Clone)]
struct Job {
    handler: Handler,
    finished: Arc<Notify>,
}

/// The apalis worker and monitor of one worker process.
pub struct Runtime {
    claimer: Claimer,
    handler: Handler,
}

impl Runtime {
    pub fn new(claimer: Claimer, handler: Handler) -> Runtime {
        Runtime { claimer, handler }
    }

    /// Runs until `shutdown` resolves or, with `until_idle`, the ledger has nothing
    /// left; true when it was stopped by `shutdown`. When it returns, no job runs.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let s = &self.claimer.engine.settings.worker;
        let (concurrency, timeout) = (s.concurrency, s.shutdown_timeout);
        let tasks = Tasks::default();
        let job = Job {
            handler: self.handler,
            finished: Arc::clone(&self.claimer.finished),
        };
        let owner = self.claimer.owner.clone();
        let (claimer, spawner) = (self.claimer, tasks.clone());
        let monitor = Monitor::new().shutdown_timeout(timeout).register(move |_| {
            let spawner = spawner.clone();
            WorkerBuilder::new(owner.clone())
                .backend(LedgerBackend::new(claimer.clone()))
                .enable_tracing()
                .catch_panic()
                .concurrency(concurrency)
                .parallelize(move |fut| spawner.spawn(fut))
                .data(job.clone())
                .build(run_job)
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let monitored = monitor.run_with_signal(async move {
            let _ = stop_rx.await;
            Ok(())
        });
        tokio::pin!(monitored, shutdown);
        let mut stop = Some(stop_tx);
        let result = loop {
            tokio::select! {
                r = &mut monitored => break r,
                _ = &mut shutdown, if stop.is_some() => {
                    if let Some(tx) = stop.take() {
                        let _ = tx.send(());
                    }
                }
            }
        };
        if let Err(err) = result {
            warn!(error = %err, "the job runtime stopped with an error");
        }
        // After the shutdown timeout the monitor returns with jobs still running: they
        // must end before their rows are handed back, or a row could be sent twice.
        tasks.abort_and_wait().await;
        stop.is_none()
    }
}
