//! The worker: claims due follow-ups in batches, runs each through the rules, the
//! recommender, the renderer and the mailer, and records outcomes through one ledger
//! writer that commits them in batched transactions.
//!
//! Guarantees (SPEC §6): a claimed row carries a lease, renewed while the worker holds
//! it; the permit that bounds in-flight work (`worker.concurrency`) is released only after
//! the outcome is committed, so a kill -9 can resend at most `concurrency` messages, each
//! with its original Message-ID.
//!
//! Whose fault a failed send is decides what happens to the row (see `process`): the
//! message's (4xx: retry with backoff; 5xx: fail, and suppress a 5.1.x bounce), the
//! relay's (back to the queue, no attempt counted; while the mailer's breaker is open
//! this worker claims nothing but one probe at a time), or nobody knows (no reply to the
//! final dot: resent once, not before a lease has passed, then failed).

use super::compose::{Decision, Engine};
use super::policy::backoff;
use crate::domain::Timestamp;
use crate::mail::relay::RelayState;
use crate::mail::{Mailer, SendError};
use crate::store::{Claimed, Finish, History, OrderContext, RelayPause, Store, StoreError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, info_span, warn};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Unique per process start (host, pid, random suffix).
    pub name: String,
    /// Return once nothing is due or in flight (demo, tests); with a manual clock the
    /// clock first jumps to each next due time.
    pub until_idle: bool,
}

impl RunOptions {
    pub fn new(until_idle: bool) -> RunOptions {
        let host = hostname();
        let suffix = crate::unsubscribe::random_secret();
        RunOptions {
            name: format!("{host}-{}-{}", std::process::id(), &suffix[..6]),
            until_idle,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RunSummary {
    pub sent: u64,
    pub skipped: u64,
    pub failed: u64,
    pub retried: u64,
    pub deferred: u64,
    /// Claimed follow-ups handed back, attempt not counted, because the relay failed or
    /// sending was paused.
    pub held_back: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    deferred: AtomicU64,
    held_back: AtomicU64,
}

/// Rows this worker holds (claimed, outcome not yet committed): their leases are renewed.
pub(super) type Held = Arc<Mutex<HashSet<i64>>>;

/// Prefix of the reply recorded when the outcome of a send is unknown.
const UNKNOWN: &str = "unknown:";

type Ack = oneshot::Sender<Result<(), String>>;

pub struct Worker {
    engine: Engine,
    mailer: Arc<Mailer>,
    opts: RunOptions,
}

impl Worker {
    pub fn new(engine: Engine, mailer: Arc<Mailer>, opts: RunOptions) -> Worker {
        Worker {
            engine,
            mailer,
            opts,
        }
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// Runs until `shutdown` resolves (or, with `until_idle`, until nothing is left).
    /// The sends run on apalis (see [`super::runtime`]): an apalis worker over the
    /// ledger, run by an apalis `Monitor`. On shutdown it stops claiming, lets in-flight
    /// jobs finish within `worker.shutdown_timeout`, and hands back whatever it still
    /// holds.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<RunSummary, StoreError> {
        let e = &self.engine;
        let s = &e.settings.worker;
        let owner = self.opts.name.clone();
        e.store
            .register_worker(
                &owner,
                &hostname(),
                std::process::id() as i64,
                Timestamp::now(),
            )
            .await?;
        info!(worker = %owner, "worker started");

        let counters = Arc::new(Counters::default());
        let (ledger_tx, ledger_rx) = mpsc::channel::<(i64, Finish, Ack)>(s.concurrency * 4 + 16);
        let writer = tokio::spawn(ledger_writer(e.clone(), owner.clone(), ledger_rx));
        let heartbeat = {
            let (store, owner) = (e.store.clone(), owner.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if let Err(err) = store
                        .register_worker(
                            &owner,
                            &hostname(),
                            std::process::id() as i64,
                            Timestamp::now(),
                        )
                        .await
                    {
                        warn!(error = %err, "heartbeat failed");
                    }
                }
            })
        };
        let (stop_periodic, periodic_stopped) = oneshot::channel::<()>();
        let periodic = super::periodic::spawn(e.clone(), owner.clone(), async move {
            let _ = periodic_stopped.await;
        });
        let held_rows: Held = Arc::default();
        let renewals = spawn_lease_renewals(e.clone(), owner.clone(), Arc::clone(&held_rows));

        let runtime = super::runtime::Runtime::new(
            super::runtime::Claimer::new(
                e.clone(),
                Arc::clone(&self.mailer),
                owner.clone(),
                self.opts.until_idle,
                Arc::clone(&held_rows),
            ),
            Handler {
                engine: e.clone(),
                mailer: Arc::clone(&self.mailer),
                tx: ledger_tx,
                counters: Arc::clone(&counters),
                held_rows: Arc::clone(&held_rows),
            },
        );
        let stopping = runtime.run(shutdown).await;
        if stopping {
            info!(worker = %owner, "stopped: jobs in flight finished or handed back");
        }

        // Every handler task has ended; the last sender of outcomes goes with the runtime.
        let _ = writer.await;
        heartbeat.abort();
        let _ = stop_periodic.send(());
        let _ = periodic.await;
        renewals.abort();
        let handed_back = e.store.release(&owner, e.clock.now()).await?;
        if handed_back > 0 {
            info!(handed_back, "follow-ups handed back to the queue");
        }
        e.store.worker_stopped(&owner, Timestamp::now()).await?;
        let c = &counters;
        Ok(RunSummary {
            sent: c.sent.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            deferred: c.deferred.load(Ordering::Relaxed),
            held_back: c.held_back.load(Ordering::Relaxed),
        })
    }
}

/// What a job (one customer's rows of a claimed batch) needs to run.
#[derive(Clone)]
pub(crate) struct Handler {
    engine: Engine,
    mailer: Arc<Mailer>,
    tx: mpsc::Sender<(i64, Finish, Ack)>,
    counters: Arc<Counters>,
    held_rows: Held,
}

impl Handler {
    /// The customer's rows in order: the weekly cap and the repeat rule see each send
    /// before deciding the next. Each row's permit is released once its outcome is
    /// committed.
    pub(crate) async fn run(&self, group: super::runtime::Group) {
        let super::runtime::Group {
            rows,
            mut history,
            orders,
        } = group;
        let orders: Vec<Option<Option<OrderContext>>> = match orders {
            Some(o) => o.into_iter().map(Some).collect(),
            None => rows.iter().map(|_| None).collect(),
        };
        for ((c, permit), ctx) in rows.into_iter().zip(orders) {
            let span = info_span!("followup", id = c.id, order_id = %c.order_id, campaign = %c.campaign, attempt = c.attempts);
            let id = c.id;
            process(
                &self.engine,
                &self.mailer,
                &self.tx,
                &self.counters,
                c,
                ctx,
                &mut history,
            )
            .instrument(span)
            .await;
            lock(&self.held_rows).remove(&id);
            drop(permit);
        }
    }
}

/// One follow-up, claimed: decide, send, record. Waits until the outcome is committed.
///
/// `ctx` is None when the batch read failed (the row is retried), `Some(None)` when the
/// order does not exist. A send is noted in `history` for the customer's next row.
async fn process(
    e: &Engine,
    mailer: &Mailer,
    tx: &mpsc::Sender<(i64, Finish, Ack)>,
    counters: &Counters,
    c: Claimed,
    ctx: Option<Option<OrderContext>>,
    history: &mut Option<History>,
) {
    let now = e.clock.now();
    let smtp = &e.settings.smtp;
    let decision = match &ctx {
        Some(ctx) => {
            e.decide_loaded(Some(c.id), &c.campaign, ctx.as_ref(), history.as_ref(), now)
                .await
        }
        None => Err(StoreError::Corrupt("batch read failed".into())),
    };
    let finish = match decision {
        Err(err) => {
            warn!(error = %err, "could not load the follow-up; retrying later");
            counters.retried.fetch_add(1, Ordering::Relaxed);
            Finish::Requeue {
                next_at: now.plus(Duration::from_secs(30)),
                reply: None,
            }
        }
        Ok(Decision::Skip(reason)) => {
            counters.skipped.fetch_add(1, Ordering::Relaxed);
            Finish::Skipped { reason }
        }
        Ok(Decision::Defer(at)) => {
            counters.deferred.fetch_add(1, Ordering::Relaxed);
            Finish::Defer { next_at: at }
        }
        Ok(Decision::TemplateError(problem)) => {
            warn!(%problem, "template error: nothing sent, follow-up kept");
            counters.retried.fetch_add(1, Ordering::Relaxed);
            Finish::Hold {
                next_at: now.plus(Duration::from_secs(60)),
                problem,
            }
        }
        Ok(Decision::Send(p)) => {
            let items: Vec<String> = p.picks.iter().map(|i| i.product_id.to_string()).collect();
            // A send the paused relay would refuse anyway needs no slot.
            if smtp.rate_limit > 0 && !mailer.relay_state().refuses_sends() {
                wait_for_send_slot(e).await;
            }
            let started = std::time::Instant::now();
            let sent = mailer.send(&p.email).await;
            e.stages.since(super::Stage::Smtp, started);
            match sent {
                Ok(reply) => {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    let at = e.clock.now();
                    let h = history.get_or_insert_with(History::default);
                    h.sent_last_week.push(at);
                    h.emailed_recently
                        .extend(p.picks.iter().map(|i| i.product_id.clone()));
                    Finish::Sent {
                        message_id: p.email.message_id.clone(),
                        reply,
                        items,
                        at,
                    }
                }
                Err(SendError::Permanent { reply, hard_bounce }) => {
                    warn!(%reply, hard_bounce, "permanent SMTP failure");
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    // A dead mailbox stays dead: later campaigns skip it (`suppressed`).
                    if hard_bounce
                        && let Err(err) = e
                            .store
                            .suppress(&p.email.to, "hard_bounce", Timestamp::now())
                            .await
                    {
                        warn!(error = %err, "could not record the hard bounce");
                    }
                    Finish::Failed { reply }
                }
                // The relay's state, not this message's: back to the queue as it was
                // (attempt not counted); the breaker decides when sending resumes.
                Err(SendError::Relay { reply }) => {
                    counters.held_back.fetch_add(1, Ordering::Relaxed);
                    let keep_unknown = c
                        .last_reply
                        .as_deref()
                        .is_some_and(|r| r.starts_with(UNKNOWN));
                    Finish::Requeue {
                        next_at: e.clock.now(),
                        // An earlier unknown outcome must stay visible to the next attempt.
                        reply: (!keep_unknown).then(|| format!("relay paused: {reply}")),
                    }
                }
                // The relay may have delivered it. Resent at most once, with the same
                // Message-ID, and not before a lease has passed (what a crash allows);
                // a second unknown ends `failed` for an operator to judge.
                Err(SendError::Unknown { reply }) => {
                    let again = c
                        .last_reply
                        .as_deref()
                        .is_some_and(|r| r.starts_with(UNKNOWN));
                    if again || c.attempts >= smtp.max_attempts as i64 {
                        warn!(%reply, "outcome unknown again: failed, not resent");
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        Finish::Failed { reply }
                    } else {
                        let (wait, retry) =
                            retry_later(e, c.attempts, e.settings.worker.lease, &reply);
                        warn!(%reply, retry_in = ?wait, "outcome unknown: resending once after the lease");
                        counters.retried.fetch_add(1, Ordering::Relaxed);
                        retry
                    }
                }
                Err(SendError::Transient { reply }) if c.attempts >= smtp.max_attempts as i64 => {
                    warn!(%reply, "last attempt failed");
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    Finish::Failed { reply }
                }
                Err(SendError::Transient { reply }) => {
                    let (wait, retry) = retry_later(e, c.attempts, Duration::ZERO, &reply);
                    info!(%reply, retry_in = ?wait, "transient SMTP failure; retrying");
                    counters.retried.fetch_add(1, Ordering::Relaxed);
                    retry
                }
            }
        }
    };
    let (ack_tx, ack_rx) = oneshot::channel();
    if tx.send((c.id, finish, ack_tx)).await.is_ok()
        && let Ok(Err(err)) = ack_rx.await
    {
        warn!(error = %err, "outcome not recorded; the lease will bring the follow-up back");
    }
}

/// Another SMTP attempt of this message after the retry backoff (and not before
/// `at_least`); this attempt counts.
fn retry_later(e: &Engine, attempts: i64, at_least: Duration, reply: &str) -> (Duration, Finish) {
    let smtp = &e.settings.smtp;
    let wait = backoff(
        attempts,
        smtp.retry_base,
        smtp.retry_max,
        rand::random::<f64>(),
    )
    .max(at_least);
    let retry = Finish::SmtpRetry {
        next_at: e.clock.now().plus(wait),
        reply: reply.to_owned(),
    };
    (wait, retry)
}

/// Commits outcomes in batches: whatever arrived while the last commit ran.
async fn ledger_writer(e: Engine, owner: String, mut rx: mpsc::Receiver<(i64, Finish, Ack)>) {
    let mut buf = Vec::new();
    while rx.recv_many(&mut buf, 512).await > 0 {
        // Outcomes arrive one by one under load: a moment's wait makes one transaction of
        // many (each commit also holds the write turn the claims need). A permit comes
        // back only after its commit, so this costs latency, never safety.
        if buf.len() < 64 {
            let until = tokio::time::Instant::now() + Duration::from_millis(3);
            while buf.len() < 512 {
                let room = 512 - buf.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut buf, room)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        let outcomes: Vec<(i64, Finish)> = buf.iter().map(|(id, f, _)| (*id, f.clone())).collect();
        let mut result = Err(String::new());
        for attempt in 0..5 {
            let started = std::time::Instant::now();
            let finished = e.store.finish(&owner, &outcomes, e.clock.now()).await;
            e.stages.since(super::Stage::Record, started);
            match finished {
                Ok(_) => {
                    result = Ok(());
                    break;
                }
                Err(err) => {
                    warn!(error = %err, attempt, "ledger write failed; retrying");
                    result = Err(err.to_string());
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        for (_, _, ack) in buf.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}

/// Waits for this message's slot under `smtp.rate_limit` (messages per second for the
/// SMTP server, shared through the database by every worker). Real time, not the
/// worker's clock: the limit protects a real server.
async fn wait_for_send_slot(e: &Engine) {
    let smtp = &e.settings.smtp;
    let interval_ms = (1000 / i64::from(smtp.rate_limit)).max(1);
    let server = crate::domain::redact(&smtp.url);
    match e
        .store
        .reserve_send_slot(&server, interval_ms, Timestamp::now())
        .await
    {
        Ok(at) => {
            let wait = at.0 - Timestamp::now().0;
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
        // Sending without a reservation would break the promise to the server; a short
        // pause and the send goes on rather than failing the follow-up.
        Err(err) => {
            warn!(error = %err, "rate limit reservation failed; pausing");
            tokio::time::sleep(Duration::from_millis(interval_ms as u64)).await;
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Renews the leases of the rows this worker holds every third of a lease, so a send
/// waiting long for its reply (up to `smtp.data_timeout`) is never taken over.
fn spawn_lease_renewals(e: Engine, owner: String, held: Held) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let lease = e.settings.worker.lease;
        let every = (lease / 3).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            let ids: Vec<i64> = lock(&held).iter().copied().collect();
            if let Err(err) = e
                .store
                .extend_leases(&owner, &ids, e.clock.now().plus(lease))
                .await
            {
                warn!(error = %err, "lease renewal failed; retrying");
            }
        }
    })
}

/// Keeps the worker's registry row in step with the relay's state, for `status`.
#[derive(Default)]
pub(super) struct RelayReport {
    /// What was last written: (reason, failed probes), None = up.
    written: Option<(String, u32)>,
}

impl RelayReport {
    pub(super) async fn update(&mut self, store: &Store, owner: &str, relay: &RelayState) {
        let now = match relay {
            RelayState::Up => None,
            RelayState::Paused {
                reason,
                failed_probes,
                ..
            } => Some((reason.clone(), *failed_probes)),
        };
        if now == self.written {
            return;
        }
        let pause = match relay {
            RelayState::Up => None,
            RelayState::Paused {
                reason,
                since,
                failed_probes,
                next_probe_in,
                ..
            } => Some(RelayPause {
                reason: reason.clone(),
                since: Timestamp(
                    since
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or_default(),
                ),
                failed_probes: i64::from(*failed_probes),
                next_probe_at: Timestamp::now().plus(*next_probe_in),
            }),
        };
        match store.set_worker_relay(owner, pause.as_ref()).await {
            Ok(()) => self.written = now,
            Err(err) => warn!(error = %err, "could not record the relay's state"),
        }
    }
}
