//! What a campaign is made of, as parsed from the config.

use super::{CampaignName, Order, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Which event starts a campaign's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Counts from `completed_at`.
    OrderCompleted,
    /// Counts from `delivered_at`.
    OrderDelivered,
    /// Only sent when marketing triggers it (`campaign trigger`).
    Manual,
}

/// How a campaign picks its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// "Complete your setup": accessories and logical complements.
    Complements,
    /// "Customers who bought this later upgraded to…".
    Upgrades,
    /// "Accessories that enhance your experience": what owners add weeks to months after
    /// buying (not in the same order or setup window).
    Enhance,
}

impl Strategy {
    /// Every strategy, in the order reports list them.
    pub const ALL: [Strategy; 3] = [Self::Complements, Self::Upgrades, Self::Enhance];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complements => "complements",
            Self::Upgrades => "upgrades",
            Self::Enhance => "enhance",
        }
    }
}

/// The share of a campaign's customers held out, 0 (off) to 1 (everybody).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct HoldoutShare(f64);

impl HoldoutShare {
    /// What a campaign gets without `holdout_share`: one customer in ten.
    pub const DEFAULT: HoldoutShare = HoldoutShare(0.1);
    pub const OFF: HoldoutShare = HoldoutShare(0.0);

    /// Accepts a number from 0 to 1.
    pub fn parse(share: f64) -> Result<HoldoutShare, String> {
        if (0.0..=1.0).contains(&share) {
            Ok(HoldoutShare(share))
        } else {
            Err(format!(
                "{share} is not a share from 0 to 1 (0.1 = one customer in ten, 0 = no holdout)"
            ))
        }
    }

    pub fn value(self) -> f64 {
        self.0
    }

    pub fn is_off(self) -> bool {
        self.0 == 0.0
    }
}

/// A follow-up's campaign as the ledger keys it: the campaign, and for a marketing
/// trigger the trigger's id (stored `NAME#TRIGGER`), so one order gets a campaign once
/// per trigger. The stored form also feeds the Message-ID, so it never changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CampaignKey {
    name: CampaignName,
    trigger: Option<String>,
}

impl CampaignKey {
    /// The key of a campaign's automatic follow-up (stored as its name).
    pub fn of(name: CampaignName) -> Self {
        Self {
            name,
            trigger: None,
        }
    }

    /// The key of a follow-up a marketing trigger scheduled.
    pub fn triggered(name: CampaignName, trigger_id: &str) -> Self {
        Self {
            name,
            trigger: Some(trigger_id.to_owned()),
        }
    }

    /// Reads the stored form (`NAME` or `NAME#TRIGGER`).
    pub fn parse(stored: &str) -> Result<Self, String> {
        let (name, trigger) = match stored.split_once('#') {
            Some((n, t)) if !t.is_empty() => (n, Some(t.to_owned())),
            Some(_) => return Err(format!("campaign key {stored:?} has an empty trigger id")),
            None => (stored, None),
        };
        Ok(Self {
            name: CampaignName::parse(name)?,
            trigger,
        })
    }

    pub fn name(&self) -> &CampaignName {
        &self.name
    }

    pub fn trigger(&self) -> Option<&str> {
        self.trigger.as_deref()
    }
}

impl fmt::Display for CampaignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.trigger {
            Some(t) => write!(f, "{}#{t}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// When a campaign's follow-up falls due for an order.
#[derive(Debug, Clone)]
pub struct ScheduleRule {
    pub campaign: CampaignName,
    pub trigger: Trigger,
    pub delay: Duration,
}

impl ScheduleRule {
    /// The due time, or None when the order has not reached the trigger.
    pub fn due_at(&self, o: &Order) -> Option<Timestamp> {
        use super::OrderStatus::*;
        let start = match (self.trigger, o.status) {
            (Trigger::OrderCompleted, Completed | Delivered) => o.completed_at.or(o.delivered_at)?,
            (Trigger::OrderDelivered, Delivered) => o.delivered_at.or(o.completed_at)?,
            _ => return None,
        };
        Some(start.plus(self.delay))
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn campaign_keys_keep_their_stored_form() {
        for stored in ["complete_your_setup", "upgrade#3f9a0c1d22e4"] {
            assert_eq!(CampaignKey::parse(stored).unwrap().to_string(), stored);
        }
        let k = CampaignKey::parse("upgrade#spring-1").unwrap();
        assert_eq!(
            (k.name().as_str(), k.trigger()),
            ("upgrade", Some("spring-1"))
        );
        assert!(CampaignKey::parse("upgrade#").is_err());
        assert!(CampaignKey::parse("#x").is_err());
    }
}
