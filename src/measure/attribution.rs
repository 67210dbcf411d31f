//! Which follow-up earned an order: the last click before it. An order the customer
//! placed within `attribution.click_window` after clicking a link in one of their sent
//! follow-ups is attributed to that follow-up; when several were clicked, the last click
//! before the order wins (ties at the same millisecond: the later follow-up). A click
//! after the order, or longer than the window before it, attributes nothing; so do
//! prefetches, duplicates, and orders that are not paid (`OrderFact::counts`). The
//! order's items that the follow-up had picked are its recommended-item revenue.

use super::input::{ClickFact, FollowupFact, OrderFact};
use super::token::HitKind;
use crate::domain::{CustomerId, Money, OrderId, OrderItem, Timestamp};
use std::collections::HashMap;
use std::time::Duration;

/// The default `attribution.click_window` (Klaviyo's default too).
pub const DEFAULT_CLICK_WINDOW: Duration = Duration::from_secs(5 * 86_400);

/// An order and the follow-up it is attributed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub order_id: OrderId,
    pub followup_id: i64,
    /// The click that won.
    pub clicked_at: Timestamp,
    pub placed_at: Timestamp,
    /// The order's total.
    pub revenue: Money,
    /// The items of the order that the follow-up had picked.
    pub recommended: Vec<OrderItem>,
}

impl Attribution {
    /// Unit price × quantity over the recommended items.
    pub fn recommended_revenue(&self) -> Money {
        self.recommended
            .iter()
            .map(|i| i.unit_price.times(i64::from(i.quantity)))
            .sum()
    }
}

/// The attributed orders among `orders`, in their order. Follow-ups that were not sent
/// and clicks on follow-ups not in `followups` take no part. The window is inclusive:
/// an order exactly `window` after the click is attributed, as is one in the same
/// millisecond as the click.
pub fn attribute(
    followups: &[FollowupFact],
    clicks: &[ClickFact],
    orders: &[OrderFact],
    window: Duration,
) -> Vec<Attribution> {
    let by_id: HashMap<i64, &FollowupFact> = followups
        .iter()
        .filter(|f| f.sent_at().is_some())
        .map(|f| (f.id, f))
        .collect();
    // Each customer's clicks, oldest first: (at, follow-up id).
    let mut by_customer: HashMap<&CustomerId, Vec<(Timestamp, i64)>> = HashMap::new();
    for c in clicks.iter().filter(|c| c.kind == HitKind::Click) {
        if let Some(f) = by_id.get(&c.followup_id) {
            by_customer
                .entry(&f.customer)
                .or_default()
                .push((c.at, f.id));
        }
    }
    for list in by_customer.values_mut() {
        list.sort_unstable();
    }
    orders
        .iter()
        .filter(|o| o.counts())
        .filter_map(|o| {
            let list = by_customer.get(&o.customer)?;
            // The last click at or before the order.
            let before = list.partition_point(|(at, _)| *at <= o.placed_at);
            let &(clicked_at, followup_id) = list[..before].last()?;
            if clicked_at.plus(window) < o.placed_at {
                return None;
            }
            let picked = &by_id[&followup_id].picked;
            Some(Attribution {
                order_id: o.id.clone(),
                followup_id,
                clicked_at,
                placed_at: o.placed_at,
                revenue: o.total,
                recommended: o
                    .items
                    .iter()
                    .filter(|i| picked.contains(&i.product_id))
                    .cloned()
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::{CampaignName, OrderStatus, ProductId};
    use crate::measure::input::Outcome;

    pub(crate) const DAY: i64 = 86_400_000;
    /// 2025-06-02T00:00:00Z, a Monday.
    pub(crate) const T0: i64 = 1_748_822_400_000;

    pub(crate) fn t(days: f64) -> Timestamp {
        Timestamp(T0 + (days * DAY as f64) as i64)
    }

    pub(crate) fn pid(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    pub(crate) fn sent(
        id: i64,
        customer: &str,
        campaign: &str,
        day: f64,
        picked: &[&str],
    ) -> FollowupFact {
        FollowupFact {
            id,
            order_id: OrderId::parse(&format!("SRC{id}")).unwrap(),
            customer: CustomerId::parse(customer).unwrap(),
            campaign: CampaignName::parse(campaign).unwrap(),
            due_at: t(day),
            outcome: Outcome::Sent { at: t(day) },
            picked: picked.iter().map(|p| pid(p)).collect(),
        }
    }

    pub(crate) fn held(id: i64, customer: &str, campaign: &str, day: f64) -> FollowupFact {
        FollowupFact {
            outcome: Outcome::Holdout,
            picked: vec![],
            ..sent(id, customer, campaign, day, &[])
        }
    }

    pub(crate) fn click(followup_id: i64, product: &str, day: f64) -> ClickFact {
        ClickFact {
            followup_id,
            product_id: pid(product),
            at: t(day),
            kind: HitKind::Click,
        }
    }

    /// An order with items (product, quantity, unit price in cents); the total is their
    /// sum plus `extra` cents (shipping).
    pub(crate) fn order(
        id: &str,
        customer: &str,
        day: f64,
        items: &[(&str, u32, i64)],
        extra: i64,
    ) -> OrderFact {
        let items: Vec<OrderItem> = items
            .iter()
            .map(|(p, q, c)| OrderItem {
                product_id: pid(p),
                quantity: *q,
                unit_price: Money::from_minor(*c),
            })
            .collect();
        OrderFact {
            id: OrderId::parse(id).unwrap(),
            customer: CustomerId::parse(customer).unwrap(),
            placed_at: t(day),
            status: OrderStatus::Completed,
            total: items
                .iter()
                .map(|i| i.unit_price.times(i64::from(i.quantity)))
                .sum::<Money>()
                + Money::from_minor(extra),
            items,
        }
    }

    const W: Duration = DEFAULT_CLICK_WINDOW;

    fn ids(a: &[Attribution]) -> Vec<(&str, i64)> {
        a.iter()
            .map(|a| (a.order_id.as_str(), a.followup_id))
            .collect()
    }

    #[test]
    fn the_last_click_before_the_order_within_the_window_wins() {
        let fs = [
            sent(1, "C1", "complete_your_setup", 0.0, &["P1", "P2"]),
            sent(2, "C1", "upgrade", 1.0, &["P3"]),
        ];
        let clicks = [
            click(1, "P1", 0.5),
            click(2, "P3", 1.5),
            // After the order: takes no part in it.
            click(1, "P2", 2.5),
        ];
        let orders = [order(
            "O1",
            "C1",
            2.0,
            &[("P1", 2, 1000), ("P3", 1, 5000), ("P9", 1, 300)],
            500,
        )];
        let a = attribute(&fs, &clicks, &orders, W);
        assert_eq!(
            ids(&a),
            [("O1", 2)],
            "the upgrade click (day 1.5) is the last one"
        );
        // P3 was picked by follow-up 2; P1 was picked by follow-up 1 only.
        assert_eq!(a[0].recommended_revenue(), Money::from_minor(5000));
        assert_eq!(a[0].revenue, Money::from_minor(2 * 1000 + 5000 + 300 + 500));
        assert_eq!(a[0].clicked_at, t(1.5));
    }

    #[test]
    fn clicks_outside_the_window_or_after_the_order_attribute_nothing() {
        let fs = [sent(1, "C1", "upgrade", 0.0, &["P1"])];
        let clicks = [click(1, "P1", 1.0)];
        let orders = [
            // Exactly 5 days after the click: inside (the window is inclusive).
            order("O_edge", "C1", 6.0, &[("P1", 1, 100)], 0),
            // One millisecond later: outside.
            OrderFact {
                placed_at: Timestamp(t(6.0).0 + 1),
                ..order("O_late", "C1", 0.0, &[("P1", 1, 100)], 0)
            },
            // Before the click.
            order("O_early", "C1", 0.9, &[("P1", 1, 100)], 0),
            // Another customer.
            order("O_other", "C2", 2.0, &[("P1", 1, 100)], 0),
        ];
        assert_eq!(ids(&attribute(&fs, &clicks, &orders, W)), [("O_edge", 1)]);
        // Same millisecond as the click: attributed.
        let same = [order("O_same", "C1", 1.0, &[], 100)];
        assert_eq!(ids(&attribute(&fs, &clicks, &same, W)), [("O_same", 1)]);
        // A shorter window.
        let short = attribute(&fs, &clicks, &orders, Duration::from_secs(86_400));
        assert!(short.is_empty());
    }

    #[test]
    fn prefetches_duplicates_unpaid_orders_and_unknown_followups_count_for_nothing() {
        let fs = [
            sent(1, "C1", "upgrade", 0.0, &["P1"]),
            held(2, "C1", "complete_your_setup", 0.0),
        ];
        let mut pre = click(1, "P1", 1.0);
        pre.kind = HitKind::Prefetch;
        let mut dup = click(1, "P1", 1.0);
        dup.kind = HitKind::Duplicate;
        let orders = [order("O1", "C1", 2.0, &[("P1", 1, 100)], 0)];
        assert!(attribute(&fs, &[pre, dup], &orders, W).is_empty());
        // Clicks on a follow-up that is not in the list, or a held-out one.
        assert!(attribute(&fs, &[click(9, "P1", 1.0), click(2, "P1", 1.0)], &orders, W).is_empty());
        for status in [
            OrderStatus::Pending,
            OrderStatus::Cancelled,
            OrderStatus::Refunded,
        ] {
            let o = OrderFact {
                status,
                ..orders[0].clone()
            };
            assert!(
                attribute(&fs, &[click(1, "P1", 1.0)], &[o], W).is_empty(),
                "{status:?}"
            );
        }
        let delivered = OrderFact {
            status: OrderStatus::Delivered,
            ..orders[0].clone()
        };
        assert_eq!(
            attribute(&fs, &[click(1, "P1", 1.0)], &[delivered], W).len(),
            1
        );
    }
}
