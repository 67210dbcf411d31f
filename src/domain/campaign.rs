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
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complements => "complements",
            Self::Upgrades => "upgrades",
        }
    }
}
