//! Bounces and complaints the sending provider reports by webhook, after it accepted the
//! message with a 250: counted, recorded on the follow-up, and (hard bounce, complaint)
//! put on the suppression list.

use super::{Result, Store, with_db};
use crate::domain::Timestamp;
use std::collections::BTreeMap;

/// What a provider reported about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceKind {
    /// The mailbox does not exist: suppressed (`hard_bounce`).
    Hard,
    /// A temporary failure: counted only.
    Soft,
    /// The recipient marked the message as spam: suppressed (`complaint`).
    Complaint,
}

impl BounceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceKind::Hard => "hard_bounce",
            BounceKind::Soft => "soft_bounce",
            BounceKind::Complaint => "complaint",
        }
    }
}

/// What recording a bounce did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BounceOutcome {
    pub kind: &'static str,
    pub suppressed: bool,
    /// Follow-ups whose Message-ID the report named.
    pub followups: u64,
}

const COUNT: &str = "INSERT INTO bounce_counts (provider, kind, n) VALUES ($1, $2, 1)
 ON CONFLICT (provider, kind) DO UPDATE SET n = bounce_counts.n + 1";
const MARK: &str = "UPDATE followups SET bounce = $3 WHERE message_id IN ($1, $2)";

impl Store {
    /// Records one provider event: counts it, marks the follow-up whose Message-ID it
    /// names (with or without angle brackets), and suppresses the address for a hard
    /// bounce or a complaint (a complaint is never downgraded by a later hard bounce).
    pub async fn record_bounce(
        &self,
        provider: &str,
        kind: BounceKind,
        email: &str,
        message_id: Option<&str>,
        now: Timestamp,
    ) -> Result<BounceOutcome> {
        let bare = message_id.map(|m| {
            m.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        });
        let bracketed = bare.as_ref().map(|m| format!("<{m}>"));
        let _turn = self.write_turn().await;
        let followups = with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            sqlx::query(COUNT).bind(provider).bind(kind.as_str()).execute(&mut *tx).await?;
            let n = match &bare {
                Some(m) if !m.is_empty() => sqlx::query(MARK).bind(m).bind(&bracketed).bind(kind.as_str())
                    .execute(&mut *tx).await?.rows_affected(),
                _ => 0,
            };
            tx.commit().await?;
            n
        });
        drop(_turn);
        let suppressed = match kind {
            BounceKind::Soft => false,
            BounceKind::Hard => {
                let existing = self.suppression_reason(email).await?;
                if existing.as_deref() == Some("complaint") {
                    true
                } else {
                    self.suppress(email, kind.as_str(), now).await?
                }
            }
            BounceKind::Complaint => self.suppress(email, kind.as_str(), now).await?,
        };
        Ok(BounceOutcome {
            kind: kind.as_str(),
            suppressed,
            followups,
        })
    }

    async fn suppression_reason(&self, email: &str) -> Result<Option<String>> {
        with_db!(&self.db, p => Ok(sqlx::query_scalar("SELECT reason FROM suppressions WHERE email = $1")
            .bind(email.to_lowercase()).fetch_optional(p).await?))
    }

    /// Provider events so far, "provider kind" → count (e.g. "postmark soft_bounce": 2).
    pub async fn bounce_counts(&self) -> Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, String, i64)> = with_db!(&self.db, p => sqlx::query_as(
            "SELECT provider, kind, CAST(n AS BIGINT) FROM bounce_counts ORDER BY provider, kind").fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(p, k, n)| (format!("{p} {k}"), n))
            .collect())
    }
}
