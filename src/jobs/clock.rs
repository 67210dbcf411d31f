//! The worker's notion of "now". Production uses the system clock; `demo` and tests use
//! a manual clock that jumps to the next due time when the queue is idle, which runs a
//! year of follow-ups in seconds with every rule (caps, quiet hours, windows) intact.

use crate::domain::Timestamp;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    pub fn manual(start: Timestamp) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(start.0)))
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Manual(t) => Timestamp(t.load(Ordering::SeqCst)),
        }
    }

    /// Moves a manual clock forward to `t` (never back); no effect on the system clock.
    pub fn advance_to(&self, t: Timestamp) {
        if let Clock::Manual(cur) = self {
            cur.fetch_max(t.0, Ordering::SeqCst);
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }
}
