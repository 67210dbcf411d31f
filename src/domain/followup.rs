//! A follow-up's life in one place (SPEC §7): its states, why it may be skipped, the
//! events that move it, and the one table of legal moves. The store writes only what
//! [`next`] allows; `status`, `followups` and `/metrics` list states and reasons from
//! these enums.
//!
//! ```text
//! scheduled ─claim─▶ sending ─deliver─▶ sent
//! deferred  ─claim─▶ sending ─fail────▶ failed ─requeue_failed─▶ scheduled
//!                    sending ─skip────▶ skipped
//! scheduled, deferred ─withdraw─▶ skipped              (order cancelled, customer forgotten)
//!                    sending ─smtp_retry, hold, requeue, release─▶ scheduled
//!                    sending ─defer───▶ deferred
//!                    sending ─claim───▶ sending        (lease ran out, taken over)
//! ```

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowupState {
    /// Waiting for `next_at` (its due time, a retry time, or a template fix).
    Scheduled,
    /// A cap or quiet hours moved it to `next_at`.
    Deferred,
    /// A worker holds it (`lease_owner`) until `next_at`, the lease's end.
    Sending,
    /// Accepted by the SMTP server. Final.
    Sent,
    /// Not sent, for a [`SkipReason`]. Final.
    Skipped,
    /// Refused by the SMTP server, or out of attempts. Final until an operator requeues.
    Failed,
}

impl FollowupState {
    pub const ALL: [FollowupState; 6] = [
        Self::Scheduled,
        Self::Deferred,
        Self::Sending,
        Self::Sent,
        Self::Skipped,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Deferred => "deferred",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("{raw:?} is not one of {}", all.join("|"))
            })
    }

    /// No event but an operator's requeue moves it again (`next_at` is NULL).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Sent | Self::Skipped | Self::Failed)
    }
}

/// Why a follow-up ended `skipped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The campaign is no longer in the config.
    CampaignRemoved,
    CampaignDisabled,
    /// The order was deleted from the store.
    OrderMissing,
    /// Cancelled or refunded (at import, by webhook, or found so at send time).
    OrderCancelled,
    UnknownCustomer,
    NoConsent,
    Unsubscribed,
    /// On the suppression list (hard bounce, complaint, operator).
    Suppressed,
    /// In the campaign's control group: no email, counted in the report.
    Holdout,
    /// Weekly cap reached with cap policy `skip`.
    FrequencyCap,
    /// No pick passed the rules.
    NothingToRecommend,
    /// The customer's personal data was erased (`forget`, Shopify `customers/redact`).
    Forgotten,
}

impl SkipReason {
    pub const ALL: [SkipReason; 12] = [
        Self::CampaignRemoved,
        Self::CampaignDisabled,
        Self::OrderMissing,
        Self::OrderCancelled,
        Self::UnknownCustomer,
        Self::NoConsent,
        Self::Unsubscribed,
        Self::Suppressed,
        Self::Holdout,
        Self::FrequencyCap,
        Self::NothingToRecommend,
        Self::Forgotten,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CampaignRemoved => "campaign_removed",
            Self::CampaignDisabled => "campaign_disabled",
            Self::OrderMissing => "order_missing",
            Self::OrderCancelled => "order_cancelled",
            Self::UnknownCustomer => "unknown_customer",
            Self::NoConsent => "no_consent",
            Self::Unsubscribed => "unsubscribed",
            Self::Suppressed => "suppressed",
            Self::Holdout => "holdout",
            Self::FrequencyCap => "frequency_cap",
            Self::NothingToRecommend => "nothing_to_recommend",
            Self::Forgotten => "forgotten",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == raw)
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a follow-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FollowupEvent {
    /// A worker takes it (due, retry time passed, or a dead worker's lease ran out).
    Claim,
    /// The SMTP server accepted the message.
    Deliver,
    /// A permanent refusal, attempts used up, or a second unknown outcome.
    Fail,
    /// The worker's decision for a row it holds.
    Skip(SkipReason),
    /// From outside, for a row no worker holds: the order was cancelled, the customer
    /// forgotten. A row a worker holds is left to it (it finds the order void, the
    /// customer gone).
    Withdraw(SkipReason),
    /// An SMTP attempt that did not deliver; tried again after the backoff (counted).
    SmtpRetry,
    /// Quiet hours or cap policy `defer` (not an attempt).
    Defer,
    /// The template failed to render for it: nothing sent, it waits for a fix (not an
    /// attempt; the problem is kept in the `held` column).
    Hold,
    /// Not decided this time (the store could not be read, the relay is paused): back
    /// to the queue as it was, the attempt not counted.
    Requeue,
    /// Graceful shutdown hands it back.
    Release,
    /// An operator requeues a failed follow-up (`followups retry`).
    RequeueFailed,
}

impl FollowupEvent {
    /// Every event, each skip reason on its own.
    pub fn all() -> Vec<FollowupEvent> {
        use FollowupEvent::*;
        let mut all = vec![
            Claim,
            Deliver,
            Fail,
            SmtpRetry,
            Defer,
            Hold,
            Requeue,
            Release,
            RequeueFailed,
        ];
        all.extend(SkipReason::ALL.map(Skip));
        all.extend(SkipReason::ALL.map(Withdraw));
        all
    }

    pub fn name(self) -> &'static str {
        use FollowupEvent::*;
        match self {
            Claim => "claim",
            Deliver => "deliver",
            Fail => "fail",
            Skip(_) => "skip",
            Withdraw(_) => "withdraw",
            SmtpRetry => "smtp_retry",
            Defer => "defer",
            Hold => "hold",
            Requeue => "requeue",
            Release => "release",
            RequeueFailed => "requeue_failed",
        }
    }
}

/// A move [`next`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {} follow-up cannot {}", .from.as_str(), .event.name())]
pub struct IllegalTransition {
    pub from: FollowupState,
    pub event: FollowupEvent,
}

use FollowupState::{Deferred, Failed, Scheduled, Sending, Sent, Skipped};

/// Every legal move, and only those: (from, event name, to). Keyed by
/// [`FollowupEvent::name`], so every skip reason moves alike.
const TABLE: &[(FollowupState, &str, FollowupState)] = &[
    (Scheduled, "claim", Sending),
    (Deferred, "claim", Sending),
    // The lease ran out: another worker takes it over (same Message-ID).
    (Sending, "claim", Sending),
    (Sending, "deliver", Sent),
    (Sending, "fail", Failed),
    (Sending, "skip", Skipped),
    (Sending, "smtp_retry", Scheduled),
    (Sending, "defer", Deferred),
    (Sending, "hold", Scheduled),
    (Sending, "requeue", Scheduled),
    (Sending, "release", Scheduled),
    (Scheduled, "withdraw", Skipped),
    (Deferred, "withdraw", Skipped),
    (Failed, "requeue_failed", Scheduled),
];

/// The state `event` moves a `from` follow-up to, or why it may not.
pub fn next(from: FollowupState, event: FollowupEvent) -> Result<FollowupState, IllegalTransition> {
    let kind = event.name();
    TABLE
        .iter()
        .find(|(f, e, _)| *f == from && *e == kind)
        .map(|&(_, _, to)| to)
        .ok_or(IllegalTransition { from, event })
}

/// The states from which `event` is legal (the store's `WHERE state IN (…)`).
pub fn sources(event: FollowupEvent) -> Vec<FollowupState> {
    let kind = event.name();
    TABLE
        .iter()
        .filter(|(_, e, _)| *e == kind)
        .map(|&(f, _, _)| f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in FollowupState::ALL {
            assert_eq!(FollowupState::parse(s.as_str()), Ok(s));
        }
        assert!(
            FollowupState::parse("held")
                .unwrap_err()
                .contains("scheduled|deferred")
        );
        for r in SkipReason::ALL {
            assert_eq!(SkipReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(SkipReason::parse("bored"), None);
    }

    #[test]
    fn final_states_have_no_way_out_but_an_operator_requeue() {
        for s in FollowupState::ALL.into_iter().filter(|s| s.is_final()) {
            for e in FollowupEvent::all() {
                if let Ok(to) = next(s, e) {
                    assert_eq!(
                        (s, e, to),
                        (Failed, FollowupEvent::RequeueFailed, Scheduled)
                    );
                }
            }
        }
    }

    #[test]
    fn nothing_is_sent_or_failed_without_a_claim() {
        for s in FollowupState::ALL {
            for e in FollowupEvent::all() {
                if let Ok(to) = next(s, e)
                    && matches!(to, Sent | Failed)
                {
                    assert_eq!(s, Sending, "{s:?} --{e:?}--> {to:?}");
                }
            }
        }
    }

    #[test]
    fn illegal_moves_say_what_was_refused() {
        let err = next(Sent, FollowupEvent::Claim).unwrap_err();
        assert_eq!(err.to_string(), "a sent follow-up cannot claim");
        assert_eq!(
            sources(FollowupEvent::Withdraw(SkipReason::Forgotten)),
            [Scheduled, Deferred]
        );
        assert_eq!(sources(FollowupEvent::Skip(SkipReason::Holdout)), [Sending]);
    }
}
