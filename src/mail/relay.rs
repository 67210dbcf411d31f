//! The relay's own state, apart from any one message's: a circuit breaker.
//!
//! A connection-level failure (refused, a 421 or 5xx greeting, EHLO/TLS/AUTH trouble, a
//! timeout before the envelope is through) or a refusal of our sender or of relaying says
//! nothing about the message that met it, and the next message would meet it too. The
//! first one opens the breaker: sends are refused at once, without touching the network,
//! until a probe is due. Then exactly one send goes through as the probe: if the relay
//! is still broken the wait doubles (`probe_base`, 2×, 4×… capped at `probe_max`),
//! anything else closes the breaker. Real time, not the worker's clock: the relay is real.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// What a caller (the worker, `status`) needs to know about the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayState {
    Up,
    Paused {
        /// The relay's reply (or what happened) that paused sending.
        reason: String,
        since: SystemTime,
        /// Probes that failed since the pause began.
        failed_probes: u32,
        /// Zero when a probe may go now.
        next_probe_in: Duration,
        /// A probe is on its way.
        probing: bool,
    },
}

impl RelayState {
    pub fn is_up(&self) -> bool {
        matches!(self, RelayState::Up)
    }

    /// True when a send now would be refused without trying the relay.
    pub fn refuses_sends(&self) -> bool {
        match self {
            RelayState::Up => false,
            RelayState::Paused {
                next_probe_in,
                probing,
                ..
            } => *probing || !next_probe_in.is_zero(),
        }
    }
}

struct Open {
    reason: String,
    since: SystemTime,
    opened: Instant,
    failed_probes: u32,
    next_probe: Instant,
    probing: bool,
}

pub(crate) struct Breaker {
    /// "host:port", for the logs.
    label: String,
    base: Duration,
    max: Duration,
    open: Mutex<Option<Open>>,
}

/// Permission to send. A probe that is dropped unresolved (cancelled) frees the probe
/// slot, so the next send may probe at once.
pub(crate) enum Admission<'a> {
    Normal,
    Probe(ProbeGuard<'a>),
}

pub(crate) struct ProbeGuard<'a> {
    breaker: &'a Breaker,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(open) = lock(&self.breaker.open).as_mut() {
            open.probing = false;
        }
    }
}

impl Admission<'_> {
    pub(crate) fn is_probe(&self) -> bool {
        matches!(self, Admission::Probe(_))
    }
}

impl Breaker {
    pub(crate) fn new(label: String, base: Duration, max: Duration) -> Breaker {
        let base = base.max(Duration::from_millis(1));
        Breaker {
            label,
            base,
            max: max.max(base),
            open: Mutex::new(None),
        }
    }

    /// Lets a send go (closed, or open with a probe due and none on its way), or
    /// returns the reason sends are paused.
    pub(crate) fn admit(&self, now: Instant) -> Result<Admission<'_>, String> {
        let mut open = lock(&self.open);
        match open.as_mut() {
            None => Ok(Admission::Normal),
            Some(o) if !o.probing && now >= o.next_probe => {
                o.probing = true;
                Ok(Admission::Probe(ProbeGuard { breaker: self }))
            }
            Some(o) => Err(o.reason.clone()),
        }
    }

    /// Records how a send went: `relay_failure` is the reply when the relay itself failed.
    /// Only a probe closes the breaker: a send that started before the pause and got
    /// through says little about the connections that fail now.
    pub(crate) fn record(
        &self,
        admission: Admission<'_>,
        relay_failure: Option<&str>,
        now: Instant,
    ) {
        let probe = admission.is_probe();
        let mut open = lock(&self.open);
        match (open.as_mut(), relay_failure) {
            (None, Some(reason)) => {
                tracing::warn!(relay = %self.label, %reason, next_probe_in = ?self.base,
                    "SMTP relay refused or unreachable: sending paused, messages stay queued");
                *open = Some(Open {
                    reason: reason.to_owned(),
                    since: SystemTime::now(),
                    opened: now,
                    failed_probes: 0,
                    next_probe: now + self.base,
                    probing: false,
                });
            }
            (Some(o), Some(reason)) if probe => {
                o.failed_probes += 1;
                let wait = self.delay(o.failed_probes);
                tracing::warn!(relay = %self.label, %reason, failed_probes = o.failed_probes,
                    next_probe_in = ?wait, "SMTP relay still failing: sending stays paused");
                o.reason = reason.to_owned();
                o.next_probe = now + wait;
                o.probing = false;
            }
            (Some(o), None) if probe => {
                tracing::info!(relay = %self.label, paused_for = ?now.duration_since(o.opened),
                    failed_probes = o.failed_probes, "SMTP relay answers again: sending resumed");
                *open = None;
            }
            _ => {}
        }
        drop(open);
        if let Admission::Probe(guard) = admission {
            // Resolved above; the guard must not touch a breaker opened anew.
            std::mem::forget(guard);
        }
    }

    pub(crate) fn state(&self, now: Instant) -> RelayState {
        match lock(&self.open).as_ref() {
            None => RelayState::Up,
            Some(o) => RelayState::Paused {
                reason: o.reason.clone(),
                since: o.since,
                failed_probes: o.failed_probes,
                next_probe_in: o.next_probe.saturating_duration_since(now),
                probing: o.probing,
            },
        }
    }

    /// base × 2^failed_probes, capped at max.
    fn delay(&self, failed_probes: u32) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(failed_probes.min(31)))
            .min(self.max)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "relay:25".into(),
            Duration::from_secs(1),
            Duration::from_secs(5),
        )
    }

    fn paused(b: &Breaker, now: Instant) -> (u32, Duration, bool) {
        match b.state(now) {
            RelayState::Paused {
                failed_probes,
                next_probe_in,
                probing,
                ..
            } => (failed_probes, next_probe_in, probing),
            RelayState::Up => panic!("expected paused"),
        }
    }

    #[test]
    fn one_failure_pauses_probes_back_off_and_one_success_closes() {
        let b = breaker();
        let t0 = Instant::now();
        let a = b.admit(t0).unwrap();
        b.record(a, Some("421 4.3.2 down"), t0);
        assert_eq!(paused(&b, t0), (0, Duration::from_secs(1), false));
        assert_eq!(b.admit(t0).err().as_deref(), Some("421 4.3.2 down"));

        // Probes at 1 s, then 2 s, 4 s, and the cap (5 s).
        let mut now = t0;
        for (failed, wait) in [(1, 2), (2, 4), (3, 5), (4, 5)] {
            now += paused(&b, now).1;
            let probe = b.admit(now).unwrap();
            assert!(probe.is_probe());
            // Only one probe at a time.
            assert!(b.admit(now).is_err());
            b.record(probe, Some("421 4.3.2 still down"), now);
            assert_eq!(paused(&b, now), (failed, Duration::from_secs(wait), false));
        }

        // A send that started before the pause and got through does not close it.
        b.record(Admission::Normal, None, now);
        assert!(!b.state(now).is_up());

        now += Duration::from_secs(5);
        let probe = b.admit(now).unwrap();
        b.record(probe, None, now);
        assert!(b.state(now).is_up());
        assert!(matches!(b.admit(now), Ok(Admission::Normal)));
    }

    #[test]
    fn a_cancelled_probe_frees_the_slot() {
        let b = breaker();
        let t0 = Instant::now();
        b.record(Admission::Normal, Some("connection refused"), t0);
        let later = t0 + Duration::from_secs(1);
        let probe = b.admit(later).unwrap();
        assert!(paused(&b, later).2, "probing");
        drop(probe);
        assert!(!paused(&b, later).2);
        assert!(b.admit(later).unwrap().is_probe());
    }
}
