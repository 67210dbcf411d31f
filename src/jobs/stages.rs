//! Where a worker's time goes, stage by stage: busy time summed over every task (so with
//! many sends in flight a stage's total can exceed the wall time) and how often each
//! stage ran. Always on: a few atomic adds per follow-up. `aftercart bench` prints it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The stages of a follow-up, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The claim statement (due rows taken with a lease).
    Claim,
    /// The batch reads (orders, customers, histories) and the rules.
    Decide,
    /// The recommender.
    Pick,
    /// Templates: subject, HTML, text.
    Render,
    /// Building the MIME message and the SMTP transaction.
    Smtp,
    /// Committing outcomes to the ledger.
    Record,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Claim,
        Stage::Decide,
        Stage::Pick,
        Stage::Render,
        Stage::Smtp,
        Stage::Record,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Claim => "claim",
            Stage::Decide => "decide",
            Stage::Pick => "pick",
            Stage::Render => "render",
            Stage::Smtp => "smtp",
            Stage::Record => "record",
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    nanos: AtomicU64,
    count: AtomicU64,
}

/// Busy time per stage of one engine (shared by its clones).
#[derive(Debug, Default)]
pub struct StageTimes {
    slots: [Slot; 6],
}

/// One stage's figures.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StageFigure {
    pub stage: &'static str,
    /// Busy time summed over all tasks.
    pub seconds: f64,
    /// How many times it ran (claims and ledger commits are per batch).
    pub count: u64,
}

impl StageTimes {
    pub fn add(&self, stage: Stage, d: Duration) {
        let slot = &self.slots[stage as usize];
        slot.nanos.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        slot.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the time since `start` to `stage`.
    pub fn since(&self, stage: Stage, start: Instant) {
        self.add(stage, start.elapsed());
    }

    pub fn reset(&self) {
        for s in &self.slots {
            s.nanos.store(0, Ordering::Relaxed);
            s.count.store(0, Ordering::Relaxed);
        }
    }

    pub fn figures(&self) -> Vec<StageFigure> {
        Stage::ALL
            .iter()
            .map(|&stage| {
                let slot = &self.slots[stage as usize];
                StageFigure {
                    stage: stage.as_str(),
                    seconds: slot.nanos.load(Ordering::Relaxed) as f64 / 1e9,
                    count: slot.count.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_per_stage() {
        let t = StageTimes::default();
        t.add(Stage::Smtp, Duration::from_millis(3));
        t.add(Stage::Smtp, Duration::from_millis(2));
        t.add(Stage::Claim, Duration::from_millis(1));
        let f = t.figures();
        assert_eq!(f.len(), 6);
        assert_eq!(f[4].stage, "smtp");
        assert_eq!(f[4].count, 2);
        assert!((f[4].seconds - 0.005).abs() < 1e-9);
        assert_eq!(f[0].count, 1);
        t.reset();
        assert!(t.figures().iter().all(|f| f.count == 0));
    }
}
