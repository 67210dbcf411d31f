//! What the measuring code reads: plain rows, filled by the store with four queries and
//! no joins beyond one per query. The report needs nothing else, so it stays a pure
//! function and every figure can be checked by hand.
//!
//! For a report from `since` to `now` (the queries may return more; the report keeps
//! only what falls in its period):
//!
//! 1. Follow-ups, sent or held out, due in the period (held-out ones are those skipped
//!    with reason `holdout`):
//!    `SELECT id, order_id, customer_id, campaign, due_at, state, sent_at, items
//!     FROM followups WHERE due_at >= $since AND due_at < $now
//!     AND (state = 'sent' OR (state = 'skipped' AND reason = 'holdout'))`
//!    (`items` is the JSON list of the product ids emailed → [`FollowupFact::picked`]).
//! 2. Hits on their links: `SELECT followup_id, product_id, at, kind FROM clicks
//!    WHERE followup_id IN (SELECT id FROM followups WHERE due_at >= $since …)`.
//! 3. Orders of their customers placed from the first due time on (attribution and the
//!    conversion windows only look after a due time):
//!    `SELECT id, customer_id, created_at, status, total, items FROM orders
//!     WHERE customer_id IN (SELECT customer_id FROM followups WHERE due_at >= $since …)
//!     AND created_at >= $since`.
//! 4. Unsubscribes in the period: `SELECT id, unsubscribed_at FROM customers
//!    WHERE unsubscribed_at >= $since AND unsubscribed_at < $now`.

use super::token::HitKind;
use crate::domain::{
    CampaignName, CustomerId, Money, OrderId, OrderItem, OrderStatus, ProductId, Timestamp,
};

/// One follow-up that was sent, or that the holdout kept from being sent.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowupFact {
    pub id: i64,
    /// The order it follows up on.
    pub order_id: OrderId,
    pub customer: CustomerId,
    pub campaign: CampaignName,
    pub due_at: Timestamp,
    pub outcome: Outcome,
    /// The products the email showed (empty for a held-out one).
    pub picked: Vec<ProductId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered to the relay at `at` (`sent_at`).
    Sent { at: Timestamp },
    /// Skipped with reason `holdout`: the control group.
    Holdout,
}

impl FollowupFact {
    pub fn sent_at(&self) -> Option<Timestamp> {
        match self.outcome {
            Outcome::Sent { at } => Some(at),
            Outcome::Holdout => None,
        }
    }
}

/// One recorded hit on a tracked link (prefetches and duplicates included: the report
/// counts only `click`s, and shows how many prefetches it left out).
#[derive(Debug, Clone, PartialEq)]
pub struct ClickFact {
    pub followup_id: i64,
    pub product_id: ProductId,
    pub at: Timestamp,
    pub kind: HitKind,
}

/// One order of a customer who had a follow-up.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderFact {
    pub id: OrderId,
    pub customer: CustomerId,
    /// When the customer placed it (`created_at`).
    pub placed_at: Timestamp,
    pub status: OrderStatus,
    pub total: Money,
    pub items: Vec<OrderItem>,
}

impl OrderFact {
    /// Only paid orders are revenue: `completed` and `delivered`. A pending one counts
    /// once it completes (the report reads the current status); cancelled and refunded
    /// ones never.
    pub fn counts(&self) -> bool {
        matches!(self.status, OrderStatus::Completed | OrderStatus::Delivered)
    }
}

/// A customer who unsubscribed (the link carries no campaign; the report blames the
/// last email sent to them before it).
#[derive(Debug, Clone, PartialEq)]
pub struct UnsubscribeFact {
    pub customer: CustomerId,
    pub at: Timestamp,
}

/// Everything a report is computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportInput {
    pub followups: Vec<FollowupFact>,
    pub clicks: Vec<ClickFact>,
    pub orders: Vec<OrderFact>,
    pub unsubscribes: Vec<UnsubscribeFact>,
}
