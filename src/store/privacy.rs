//! Privacy requests: erasing a customer's personal data (`aftercart forget`, Shopify
//! `customers/redact`) and producing it (`aftercart export-customer`, Shopify
//! `customers/data_request`).
//!
//! Forgetting keeps the customer row (its id, with `forgotten_at` set) and every ledger
//! row: the (order, campaign) keys stay, so a replayed webhook or a re-import schedules
//! nothing already scheduled, and an upsert of the same customer id changes nothing
//! (see `CUSTOMERS_*` in `catalog`). Erased: email, name, time zone, locale, consent (off),
//! on-site events, the suppression entry of the address, addresses quoted in SMTP replies;
//! pending follow-ups end `skipped` (`forgotten`). On SQLite the work runs with
//! `secure_delete` on (freed space is zeroed) and the WAL is checkpointed and truncated
//! afterwards, so the address is gone from the database files, not just unreachable.

use super::ops::reply_group;
use super::{Db, Result, Store, StoreError, with_db};
use crate::domain::{FollowupEvent, FollowupState, SkipReason, Timestamp};
use serde_json::{Value, json};
use sqlx::Row;

/// What `forget` did for one customer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Forgotten {
    pub customer_id: String,
    /// False when the customer had been forgotten before (nothing left to erase).
    pub erased: bool,
    pub events_deleted: u64,
    pub followups_skipped: u64,
}

const FIND: &str = "SELECT id, email, forgotten_at FROM customers WHERE id = $1 OR (email <> '' AND LOWER(email) = LOWER($1)) ORDER BY id";
const ERASE: &str = "UPDATE customers SET email = '', name = NULL, timezone = NULL, locale = NULL,
   marketing_consent = false, unsubscribed_at = COALESCE(unsubscribed_at, $2), forgotten_at = COALESCE(forgotten_at, $2)
 WHERE id = $1";
const SKIP: &str = "UPDATE followups SET state = $3, reason = $4, next_at = NULL, updated_at = $2
 WHERE customer_id = $1 AND state IN ('scheduled', 'deferred')";
const REPLIES: &str =
    "SELECT id, smtp_reply FROM followups WHERE customer_id = $1 AND smtp_reply LIKE '%@%'";

impl Store {
    /// Erases the personal data of the customer whose id or email is `who` (every
    /// customer with that email). Empty when nobody matches.
    pub async fn forget(&self, who: &str, now: Timestamp) -> Result<Vec<Forgotten>> {
        let skipped_state = super::ledger::transition(
            FollowupState::Scheduled,
            FollowupEvent::Withdraw(SkipReason::Forgotten),
        )?;
        let _turn = self.write_turn().await;
        let out = with_db!(&self.db, p => {
            let mut conn = p.acquire().await?;
            if matches!(self.db, Db::Sqlite(_)) {
                // Freed cells and pages are zeroed, not left behind with the address in them.
                sqlx::query("PRAGMA secure_delete = ON").execute(&mut *conn).await?;
            }
            let done = async {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let found = sqlx::query(FIND).bind(who).fetch_all(&mut *tx).await?;
                let mut out = Vec::with_capacity(found.len());
                for r in found {
                    let id: String = r.try_get("id")?;
                    let email: String = r.try_get("email")?;
                    let before: Option<i64> = r.try_get("forgotten_at")?;
                    sqlx::query(ERASE).bind(&id).bind(now.0).execute(&mut *tx).await?;
                    let events = sqlx::query("DELETE FROM events WHERE customer_id = $1")
                        .bind(&id).execute(&mut *tx).await?.rows_affected();
                    if !email.is_empty() {
                        sqlx::query("DELETE FROM suppressions WHERE email = $1")
                            .bind(email.to_lowercase()).execute(&mut *tx).await?;
                    }
                    let skipped = sqlx::query(SKIP).bind(&id).bind(now.0).bind(skipped_state).bind(SkipReason::Forgotten.as_str())
                        .execute(&mut *tx).await?.rows_affected();
                    for f in sqlx::query(REPLIES).bind(&id).fetch_all(&mut *tx).await? {
                        let fid: i64 = f.try_get("id")?;
                        let reply: Option<String> = f.try_get("smtp_reply")?;
                        sqlx::query("UPDATE followups SET smtp_reply = $2 WHERE id = $1")
                            .bind(fid).bind(reply_group(reply.as_deref())).execute(&mut *tx).await?;
                    }
                    out.push(Forgotten {
                        customer_id: id,
                        erased: before.is_none() || events > 0,
                        events_deleted: events,
                        followups_skipped: skipped,
                    });
                }
                tx.commit().await?;
                Ok::<_, StoreError>(out)
            }
            .await;
            if matches!(self.db, Db::Sqlite(_)) {
                let _ = sqlx::query("PRAGMA secure_delete = OFF").execute(&mut *conn).await;
            }
            done?
        });
        if let Db::Sqlite(p) = &self.db
            && !out.is_empty()
        {
            // The erased pages go into the main file and the write-ahead log, which still
            // holds the pages as they were, is emptied.
            let busy: (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(p)
                .await?;
            if busy.0 != 0 {
                tracing::warn!(
                    "the write-ahead log could not be emptied now (another process is reading); \
                     run `aftercart forget` again when it is idle to be sure no copy is left"
                );
            }
        }
        Ok(out)
    }

    /// Records a data request (Shopify `customers/data_request`) for the operator; false
    /// when this request id was recorded before.
    pub async fn record_data_request(
        &self,
        id: &str,
        customer_id: &str,
        source: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let sql = "INSERT INTO data_requests (id, customer_id, source, requested_at) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (id) DO NOTHING";
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(id).bind(customer_id).bind(source).bind(now.0)
            .execute(p).await?.rows_affected() == 1))
    }

    /// Everything stored about the customer whose id or email is `who` (every customer
    /// with that email), as JSON: the customer, orders, on-site events, follow-ups
    /// (emails sent or planned), suppression and data requests. Empty when nobody matches.
    pub async fn export_customer(&self, who: &str) -> Result<Vec<Value>> {
        let customer_sql = "SELECT id, email, name, timezone, locale, marketing_consent, unsubscribed_at, forgotten_at
                            FROM customers WHERE id = $1 OR (email <> '' AND LOWER(email) = LOWER($1)) ORDER BY id";
        let orders_sql =
            "SELECT id, status, created_at, completed_at, delivered_at, total, currency, items
                          FROM orders WHERE customer_id = $1 ORDER BY created_at, id";
        let events_sql = "SELECT product_id, kind, at FROM events WHERE customer_id = $1 ORDER BY at, product_id";
        let followups_sql = "SELECT order_id, campaign, state, reason, due_at, sent_at, message_id, smtp_reply, bounce, items
                             FROM followups WHERE customer_id = $1 ORDER BY id";
        let requests_sql = "SELECT id, source, requested_at FROM data_requests WHERE customer_id = $1 ORDER BY requested_at, id";
        let time = |v: Option<i64>| v.map(|t| Timestamp(t).rfc3339());
        with_db!(&self.db, p => {
            let mut out = Vec::new();
            for c in sqlx::query(customer_sql).bind(who).fetch_all(p).await? {
                let id: String = c.try_get("id")?;
                let email: String = c.try_get("email")?;
                let mut orders = Vec::new();
                for o in sqlx::query(orders_sql).bind(&id).fetch_all(p).await? {
                    let items: String = o.try_get("items")?;
                    orders.push(json!({
                        "id": o.try_get::<String, _>("id")?, "status": o.try_get::<String, _>("status")?,
                        "created_at": time(o.try_get("created_at")?), "completed_at": time(o.try_get("completed_at")?),
                        "delivered_at": time(o.try_get("delivered_at")?),
                        "total": crate::domain::Money::from_minor(o.try_get("total")?).decimal(),
                        "currency": o.try_get::<String, _>("currency")?,
                        "items": serde_json::from_str::<Value>(&items).unwrap_or(Value::Null),
                    }));
                }
                let mut events = Vec::new();
                for e in sqlx::query(events_sql).bind(&id).fetch_all(p).await? {
                    events.push(json!({
                        "product_id": e.try_get::<String, _>("product_id")?, "kind": e.try_get::<String, _>("kind")?,
                        "at": time(e.try_get("at")?),
                    }));
                }
                let mut followups = Vec::new();
                for f in sqlx::query(followups_sql).bind(&id).fetch_all(p).await? {
                    let items: Option<String> = f.try_get("items")?;
                    followups.push(json!({
                        "order_id": f.try_get::<String, _>("order_id")?, "campaign": f.try_get::<String, _>("campaign")?,
                        "state": f.try_get::<String, _>("state")?, "reason": f.try_get::<Option<String>, _>("reason")?,
                        "due_at": time(f.try_get("due_at")?), "sent_at": time(f.try_get("sent_at")?),
                        "message_id": f.try_get::<Option<String>, _>("message_id")?,
                        "smtp_reply": f.try_get::<Option<String>, _>("smtp_reply")?,
                        "bounce": f.try_get::<Option<String>, _>("bounce")?,
                        "items": items.and_then(|i| serde_json::from_str::<Value>(&i).ok()),
                    }));
                }
                let suppression = if email.is_empty() {
                    None
                } else {
                    sqlx::query("SELECT reason, created_at FROM suppressions WHERE email = $1")
                        .bind(email.to_lowercase()).fetch_optional(p).await?
                        .map(|s| -> Result<Value> {
                            Ok(json!({"reason": s.try_get::<String, _>("reason")?, "since": time(s.try_get("created_at")?)}))
                        })
                        .transpose()?
                };
                let mut requests = Vec::new();
                for r in sqlx::query(requests_sql).bind(&id).fetch_all(p).await? {
                    requests.push(json!({
                        "id": r.try_get::<String, _>("id")?, "source": r.try_get::<String, _>("source")?,
                        "requested_at": time(r.try_get("requested_at")?),
                    }));
                }
                out.push(json!({
                    "customer": {
                        "id": id, "email": (!email.is_empty()).then_some(email),
                        "name": c.try_get::<Option<String>, _>("name")?,
                        "timezone": c.try_get::<Option<String>, _>("timezone")?,
                        "locale": c.try_get::<Option<String>, _>("locale")?,
                        "marketing_consent": c.try_get::<bool, _>("marketing_consent")?,
                        "unsubscribed_at": time(c.try_get("unsubscribed_at")?),
                        "forgotten_at": time(c.try_get("forgotten_at")?),
                    },
                    "orders": orders, "events": events, "followups": followups,
                    "suppression": suppression, "data_requests": requests,
                }));
            }
            Ok(out)
        })
    }
}
