//! The follow-up ledger, which is also the queue. SPEC §7's lifecycle (the legal moves
//! are the table in `domain::followup`; every state written here comes from it):
//!
//! - `scheduled`: stored when an order reaches its campaign's trigger; `next_at` = due.
//! - `deferred`: a cap or quiet hours moved it; `next_at` = the first allowed time.
//! - `sending`: a worker claimed it (`lease_owner`, `next_at` = lease expiry). If that
//!   worker dies the lease runs out and another worker claims it again; the message it
//!   sends carries the same Message-ID.
//! - `sent` | `failed` | `skipped` (with a reason): final, `next_at` NULL.
//!
//! Only the lease owner may finish a row (`finish` checks it), so a worker whose lease
//! was taken over cannot overwrite the new owner's outcome.

use super::{Db, Result, Store, StoreError, with_db};
use crate::domain::{
    CampaignKey, CustomerId, FollowupEvent, FollowupState, OrderId, SkipReason, Timestamp,
    next_state,
};
use sqlx::Row;

/// A row a worker now holds.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub order_id: OrderId,
    pub campaign: CampaignKey,
    pub customer_id: CustomerId,
    pub due_at: Timestamp,
    /// Counting this claim.
    pub attempts: i64,
    /// The reply the previous attempt left (an unknown outcome starts with "unknown:").
    pub last_reply: Option<String>,
}

/// How a claimed row ends (or goes back to the queue): each variant is one event of the
/// lifecycle (`domain::FollowupEvent`), and the state it writes comes from its table.
#[derive(Debug, Clone)]
pub enum Finish {
    Sent {
        message_id: String,
        reply: String,
        items: Vec<String>,
        at: Timestamp,
    },
    Skipped {
        reason: SkipReason,
    },
    Failed {
        reply: String,
    },
    /// Another SMTP attempt at `next_at` (this one counted).
    SmtpRetry {
        next_at: Timestamp,
        reply: String,
    },
    /// Quiet hours or cap policy `defer`: `deferred` until `next_at`, no attempt.
    Defer {
        next_at: Timestamp,
    },
    /// The template failed for it: `scheduled`, held with the problem until `next_at`.
    Hold {
        next_at: Timestamp,
        problem: String,
    },
    /// Not decided (store unreadable, relay paused): back as it was, no attempt; `reply`
    /// replaces the last one when given.
    Requeue {
        next_at: Timestamp,
        reply: Option<String>,
    },
}

impl Finish {
    pub fn event(&self) -> FollowupEvent {
        match self {
            Finish::Sent { .. } => FollowupEvent::Deliver,
            Finish::Skipped { reason } => FollowupEvent::Skip(*reason),
            Finish::Failed { .. } => FollowupEvent::Fail,
            Finish::SmtpRetry { .. } => FollowupEvent::SmtpRetry,
            Finish::Defer { .. } => FollowupEvent::Defer,
            Finish::Hold { .. } => FollowupEvent::Hold,
            Finish::Requeue { .. } => FollowupEvent::Requeue,
        }
    }

    /// The row this outcome writes (one element of the batch's JSON array).
    fn row(&self, id: i64) -> Result<serde_json::Value> {
        let state = transition(FollowupState::Sending, self.event())?;
        let mut row = serde_json::json!({"id": id, "state": state, "refund": 0});
        match self {
            Finish::Sent {
                message_id,
                reply,
                items,
                at,
            } => {
                row["message_id"] = message_id.as_str().into();
                row["smtp_reply"] = reply.as_str().into();
                row["items"] = serde_json::to_string(items).unwrap_or_default().into();
                row["sent_at"] = at.0.into();
            }
            Finish::Skipped { reason } => row["reason"] = reason.as_str().into(),
            Finish::Failed { reply } => row["smtp_reply"] = reply.as_str().into(),
            Finish::SmtpRetry { next_at, reply } => {
                row["smtp_reply"] = reply.as_str().into();
                row["next_at"] = next_at.0.into();
            }
            Finish::Defer { next_at } => {
                row["next_at"] = next_at.0.into();
                row["refund"] = 1.into();
            }
            Finish::Hold { next_at, problem } => {
                // Shown as the last outcome in `followups`; the hold itself is `held`.
                row["smtp_reply"] = format!("template error: {problem}").into();
                row["held"] = problem.as_str().into();
                row["next_at"] = next_at.0.into();
                row["refund"] = 1.into();
            }
            Finish::Requeue { next_at, reply } => {
                if let Some(reply) = reply {
                    row["smtp_reply"] = reply.as_str().into();
                }
                row["next_at"] = next_at.0.into();
                row["refund"] = 1.into();
            }
        }
        Ok(row)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FollowupRow {
    pub id: i64,
    pub order_id: String,
    pub campaign: String,
    pub customer_id: String,
    pub state: String,
    pub reason: Option<String>,
    pub due_at: Timestamp,
    pub next_at: Option<Timestamp>,
    pub sent_at: Option<Timestamp>,
    pub message_id: Option<String>,
    pub smtp_reply: Option<String>,
    pub attempts: i64,
    pub items: Vec<String>,
    /// The template problem holding a `scheduled` row back (None when nothing holds it).
    pub held: Option<String>,
}

const CLAIM_SQLITE: &str = "UPDATE followups SET state = $5, lease_owner = $1, next_at = $2, attempts = attempts + 1, updated_at = $3
 WHERE id IN (SELECT id FROM followups WHERE next_at IS NOT NULL AND next_at <= $3 ORDER BY next_at LIMIT $4)
 RETURNING id, order_id, campaign, customer_id, due_at, attempts, smtp_reply";
// SKIP LOCKED lets many workers claim side by side without waiting on each other.
const CLAIM_PG: &str = "UPDATE followups f SET state = $5, lease_owner = $1, next_at = $2, attempts = f.attempts + 1, updated_at = $3
 FROM (SELECT id FROM followups WHERE next_at IS NOT NULL AND next_at <= $3 ORDER BY next_at LIMIT $4 FOR UPDATE SKIP LOCKED) c
 WHERE f.id = c.id
 RETURNING f.id, f.order_id, f.campaign, f.customer_id, f.due_at, f.attempts, f.smtp_reply";

// Every outcome of a batch in one statement: the rows arrive as one JSON array, so the
// SQL stays fixed. Only the lease owner may finish a row still in `sending`.
const FINISH_SQLITE: &str = "UPDATE followups SET state = j.state, reason = j.reason,
   message_id = COALESCE(j.message_id, followups.message_id), smtp_reply = COALESCE(j.smtp_reply, followups.smtp_reply),
   items = COALESCE(j.items, followups.items), sent_at = COALESCE(j.sent_at, followups.sent_at), next_at = j.next_at,
   attempts = followups.attempts - j.refund, lease_owner = NULL, held = j.held, updated_at = $3
 FROM (SELECT value->>'id' AS id, value->>'state' AS state, value->>'reason' AS reason, value->>'message_id' AS message_id,
              value->>'smtp_reply' AS smtp_reply, value->>'items' AS items, value->>'sent_at' AS sent_at,
              value->>'next_at' AS next_at, value->>'refund' AS refund, value->>'held' AS held FROM json_each($1)) AS j
 WHERE followups.id = j.id AND followups.lease_owner = $2 AND followups.state = 'sending'";
const FINISH_PG: &str = "UPDATE followups SET state = j.state, reason = j.reason,
   message_id = COALESCE(j.message_id, followups.message_id), smtp_reply = COALESCE(j.smtp_reply, followups.smtp_reply),
   items = COALESCE(j.items, followups.items), sent_at = COALESCE(j.sent_at, followups.sent_at), next_at = j.next_at,
   attempts = followups.attempts - j.refund, lease_owner = NULL, held = j.held, updated_at = $3
 FROM jsonb_to_recordset($1::jsonb) AS j(id bigint, state text, reason text, message_id text, smtp_reply text, items text,
   sent_at bigint, next_at bigint, refund bigint, held text)
 WHERE followups.id = j.id AND followups.lease_owner = $2 AND followups.state = 'sending'";

/// The state the lifecycle table gives, as stored.
pub(super) fn transition(from: FollowupState, event: FollowupEvent) -> Result<&'static str> {
    next_state(from, event)
        .map(FollowupState::as_str)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Takes up to `limit` due rows (due, deferred and retry times passed, or leases run
    /// out) for `owner` until `lease_until`.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        let sql = if matches!(self.db, Db::Sqlite(_)) {
            CLAIM_SQLITE
        } else {
            CLAIM_PG
        };
        let claimed = transition(FollowupState::Scheduled, FollowupEvent::Claim)?;
        let _turn = self.write_turn().await;
        with_db!(&self.db, p => {
            let rows = sqlx::query(sql).bind(owner).bind(lease_until.0).bind(now.0).bind(limit as i64).bind(claimed).fetch_all(p).await?;
            let mut out = rows.iter().map(|r| -> Result<Claimed> {
                Ok(Claimed {
                    id: r.try_get("id")?,
                    order_id: OrderId::parse(r.try_get("order_id")?).map_err(StoreError::Corrupt)?,
                    campaign: CampaignKey::parse(r.try_get("campaign")?).map_err(StoreError::Corrupt)?,
                    customer_id: CustomerId::parse(r.try_get("customer_id")?).map_err(StoreError::Corrupt)?,
                    due_at: Timestamp(r.try_get("due_at")?),
                    attempts: r.try_get("attempts")?,
                    last_reply: r.try_get("smtp_reply")?,
                })
            }).collect::<Result<Vec<_>>>()?;
            out.sort_by_key(|c| (c.due_at, c.id));
            Ok(out)
        })
    }

    /// Records outcomes in one statement. Returns how many rows this owner still held
    /// (a row whose lease was taken over is left to its new owner).
    pub async fn finish(
        &self,
        owner: &str,
        outcomes: &[(i64, Finish)],
        now: Timestamp,
    ) -> Result<u64> {
        let rows = outcomes
            .iter()
            .map(|(id, f)| f.row(*id))
            .collect::<Result<Vec<_>>>()?;
        let json = serde_json::Value::from(rows).to_string();
        let sql = if matches!(self.db, Db::Sqlite(_)) {
            FINISH_SQLITE
        } else {
            FINISH_PG
        };
        let _turn = self.write_turn().await;
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(&json).bind(owner).bind(now.0).execute(p).await?.rows_affected()))
    }

    /// Extends the leases of rows `owner` still holds to `until`: a send may wait up to
    /// `smtp.data_timeout` for the reply to its final dot, longer than a lease, and must
    /// not be taken over (and sent twice) meanwhile. A dead worker renews nothing, so its
    /// rows come back at most one lease after its last renewal.
    pub async fn extend_leases(&self, owner: &str, ids: &[i64], until: Timestamp) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let json = serde_json::Value::from(ids.to_vec()).to_string();
        let sql = if matches!(self.db, Db::Sqlite(_)) {
            "UPDATE followups SET next_at = $3 WHERE id IN (SELECT value FROM json_each($2))
             AND lease_owner = $1 AND state = 'sending'"
        } else {
            "UPDATE followups SET next_at = $3 WHERE id IN (SELECT jsonb_array_elements_text($2::jsonb)::bigint)
             AND lease_owner = $1 AND state = 'sending'"
        };
        let _turn = self.write_turn().await;
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(owner).bind(&json).bind(until.0).execute(p).await?.rows_affected()))
    }

    /// Hands rows this worker holds back to the queue at once (graceful shutdown).
    pub async fn release(&self, owner: &str, now: Timestamp) -> Result<u64> {
        let sql = "UPDATE followups SET state = $3, next_at = $2, attempts = attempts - 1, lease_owner = NULL, updated_at = $2
                   WHERE lease_owner = $1 AND state = 'sending'";
        let to = transition(FollowupState::Sending, FollowupEvent::Release)?;
        let _turn = self.write_turn().await;
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(owner).bind(now.0).bind(to).execute(p).await?.rows_affected()))
    }

    pub async fn followups(
        &self,
        order: Option<&str>,
        state: Option<FollowupState>,
        limit: i64,
    ) -> Result<Vec<FollowupRow>> {
        let sql = "SELECT id, order_id, campaign, customer_id, state, reason, due_at, next_at, sent_at, message_id, smtp_reply, attempts, items, held
                   FROM followups WHERE ($1 = '' OR order_id = $1) AND ($2 = '' OR state = $2) ORDER BY due_at, id LIMIT $3";
        with_db!(&self.db, p => {
            let rows = sqlx::query(sql).bind(order.unwrap_or("")).bind(state.map(|s| s.as_str()).unwrap_or("")).bind(limit).fetch_all(p).await?;
            rows.iter().map(|r| -> Result<FollowupRow> {
                let items: Option<String> = r.try_get("items")?;
                Ok(FollowupRow {
                    id: r.try_get("id")?,
                    order_id: r.try_get("order_id")?,
                    campaign: r.try_get("campaign")?,
                    customer_id: r.try_get("customer_id")?,
                    state: r.try_get("state")?,
                    reason: r.try_get("reason")?,
                    due_at: Timestamp(r.try_get("due_at")?),
                    next_at: r.try_get::<Option<i64>, _>("next_at")?.map(Timestamp),
                    sent_at: r.try_get::<Option<i64>, _>("sent_at")?.map(Timestamp),
                    message_id: r.try_get("message_id")?,
                    smtp_reply: r.try_get("smtp_reply")?,
                    attempts: r.try_get("attempts")?,
                    items: items.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default(),
                    held: r.try_get("held")?,
                })
            }).collect()
        })
    }

    /// The earliest time any row may be taken (None when every row is final).
    pub async fn next_wakeup(&self) -> Result<Option<Timestamp>> {
        with_db!(&self.db, p => {
            let t: Option<i64> = sqlx::query_scalar("SELECT MIN(next_at) FROM followups WHERE next_at IS NOT NULL").fetch_one(p).await?;
            Ok(t.map(Timestamp))
        })
    }

    /// Re-queues failed follow-ups on purpose (never sent or skipped ones).
    pub async fn retry_failed(&self, order: Option<&str>, now: Timestamp) -> Result<u64> {
        let sql = "UPDATE followups SET state = $3, next_at = $2, attempts = 0, updated_at = $2
                   WHERE state = 'failed' AND ($1 = '' OR order_id = $1)";
        let to = transition(FollowupState::Failed, FollowupEvent::RequeueFailed)?;
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(order.unwrap_or("")).bind(now.0).bind(to).execute(p).await?.rows_affected()))
    }

    /// Schedules one follow-up (a marketing trigger); false when it already existed.
    pub async fn schedule_one(
        &self,
        order_id: &str,
        campaign: &str,
        customer_id: &str,
        due: Timestamp,
        now: Timestamp,
    ) -> Result<bool> {
        let sql = "INSERT INTO followups (order_id, campaign, customer_id, state, due_at, next_at, created_at, updated_at)
                   VALUES ($1, $2, $3, 'scheduled', $4, $4, $5, $5) ON CONFLICT (order_id, campaign) DO NOTHING";
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(order_id).bind(campaign).bind(customer_id).bind(due.0).bind(now.0)
            .execute(p).await?.rows_affected() == 1))
    }
}
