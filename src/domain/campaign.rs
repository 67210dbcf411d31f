//! What a campaign is made of, as parsed from the config.

use serde::{Deserialize, Serialize};

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
