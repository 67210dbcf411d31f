//! Periodic work, run by apalis: each job is an apalis worker over an `apalis-cron`
//! scheduler, and the worker process runs them under one apalis `Monitor` beside its
//! send loop.
//!
//! - `model-rebuild` (every `worker.model_rebuild_interval`): rebuilds the recommendation
//!   model and swaps it in; picks keep using the old one meanwhile.
//! - `maintenance` (every `worker.maintenance_interval`): compacts follow-ups that ended
//!   more than `worker.retention` ago (their (order, campaign) key stays, so nothing is
//!   sent twice) and forgets worker-registry and periodic-run records older than a week.
//!
//! Ticks fall on whole multiples of the interval since the Unix epoch, so every process
//! sharing a database fires the same ticks; the first to record (job, tick) in
//! `periodic_runs` runs it and the others skip it. A tick thus runs once across all
//! processes and hosts, on SQLite and PostgreSQL alike, without a lock held open.

use super::compose::{Engine, load_model};
use crate::domain::Timestamp;
use apalis::prelude::{BoxDynError, Data, Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_cron::{CronScheduler, Schedule, Tick};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{Instrument, debug, info, info_span, warn};

/// Registry and run records older than this are forgotten by `maintenance`.
const REGISTRY_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodicJob {
    ModelRebuild,
    Maintenance,
}

impl PeriodicJob {
    pub const ALL: [PeriodicJob; 2] = [Self::ModelRebuild, Self::Maintenance];

    /// The name in `periodic_runs` and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModelRebuild => "model-rebuild",
            Self::Maintenance => "maintenance",
        }
    }

    /// Its interval; zero turns the job off.
    pub fn interval(self, e: &Engine) -> Duration {
        let w = &e.settings.worker;
        match self {
            Self::ModelRebuild => w.model_rebuild_interval,
            Self::Maintenance => w.maintenance_interval,
        }
    }
}

/// A schedule of ticks at whole multiples of `secs` seconds since the Unix epoch.
#[derive(Debug, Clone)]
pub struct Every {
    secs: u64,
    last: u64,
}

impl Every {
    /// Whole seconds, at least one (a shorter interval is rounded up).
    pub fn new(interval: Duration) -> Every {
        let secs = interval.as_secs() + u64::from(interval.subsec_nanos() > 0);
        Every {
            secs: secs.max(1),
            last: 0,
        }
    }

    /// The first tick after `now_secs` (and after the last one given out: a timer that
    /// fires a hair early must not fire the same tick twice).
    pub fn next_after(&mut self, now_secs: u64) -> u64 {
        let next = (now_secs.max(self.last) / self.secs + 1) * self.secs;
        self.last = next;
        next
    }
}

impl Schedule<chrono::Utc> for Every {
    fn next_tick(&mut self, _: &chrono::Utc) -> Option<Tick<chrono::Utc>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(Tick::new(self.next_after(now)))
    }
}

/// What a tick's handler is given.
#[derive(Clone)]
struct JobContext {
    engine: Engine,
    job: PeriodicJob,
    /// The worker process's name: who ran the tick.
    owner: String,
}

async fn on_tick(tick: Tick<chrono::Utc>, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    let (e, job) = (&ctx.engine, ctx.job);
    let at = tick.get_timestamp() as i64;
    let span = info_span!("periodic", job = job.as_str(), tick = at);
    async {
        if !e
            .store
            .claim_tick(job.as_str(), at, &ctx.owner, Timestamp::now())
            .await?
        {
            debug!("tick already run by another process");
            return Ok(());
        }
        run(e, job).await
    }
    .instrument(span)
    .await
}

/// Runs `job` once, here and now (a tick's work, also what tests call).
pub async fn run(e: &Engine, job: PeriodicJob) -> Result<(), BoxDynError> {
    match job {
        PeriodicJob::ModelRebuild => match load_model(&e.store).await {
            Ok(m) => {
                e.swap_model(m);
                info!("recommendation model rebuilt");
            }
            Err(err) => {
                warn!(error = %err, "model rebuild failed; keeping the current one");
                return Err(err.into());
            }
        },
        PeriodicJob::Maintenance => {
            let now = e.clock.now();
            let compacted = e
                .store
                .compact_ended(now.minus(e.settings.worker.retention))
                .await?;
            let forgotten = e
                .store
                .sweep_registry(Timestamp::now().minus(REGISTRY_KEEP))
                .await?;
            info!(compacted, forgotten_workers = forgotten, "maintenance done");
        }
    }
    Ok(())
}

/// Starts the periodic jobs under one apalis `Monitor`; they stop when `stop` resolves
/// (a tick in progress gets `worker.shutdown_timeout` to finish).
pub fn spawn(
    e: Engine,
    owner: String,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut monitor = Monitor::new().shutdown_timeout(e.settings.worker.shutdown_timeout);
    let mut any = false;
    for job in PeriodicJob::ALL {
        let every = job.interval(&e);
        if every.is_zero() {
            continue;
        }
        any = true;
        let ctx = JobContext {
            engine: e.clone(),
            job,
            owner: owner.clone(),
        };
        let name = format!("{owner}/{}", job.as_str());
        monitor = monitor.register(move |_| {
            WorkerBuilder::new(name.clone())
                .backend(CronScheduler::new(Every::new(every)))
                .enable_tracing()
                .catch_panic()
                .concurrency(1)
                .data(ctx.clone())
                .build(on_tick)
        });
    }
    tokio::spawn(async move {
        if !any {
            return stop.await;
        }
        if let Err(err) = monitor
            .run_with_signal(async move {
                stop.await;
                Ok(())
            })
            .await
        {
            warn!(error = %err, "periodic jobs stopped with an error");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_multiples_of_the_interval_and_never_repeat() {
        let mut e = Every::new(Duration::from_secs(60));
        assert_eq!(e.next_after(0), 60);
        assert_eq!(e.next_after(119), 120);
        // A timer firing a little early (still at 119 s) gets the next tick, not 120 again.
        assert_eq!(e.next_after(119), 180);
        assert_eq!(e.next_after(600), 660);
    }

    #[test]
    fn sub_second_intervals_round_up_to_a_second() {
        let mut e = Every::new(Duration::from_millis(300));
        assert_eq!(e.next_after(10), 11);
        let mut e = Every::new(Duration::from_millis(1500));
        assert_eq!(e.next_after(3), 4);
    }
}
