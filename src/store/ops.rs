//! What operators and compliance need: status counts, live workers, the suppression
//! list, unsubscribes and template errors.

use super::{FollowupState, Result, Store, StoreError, with_db};
use crate::domain::Timestamp;
use sqlx::Row;
use std::collections::BTreeMap;

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    pub followups: BTreeMap<String, i64>,
    pub skipped_by_reason: BTreeMap<String, i64>,
    /// Failed follow-ups by SMTP reply (code and text, addresses masked).
    pub failed_by_reply: BTreeMap<String, i64>,
    /// Provider webhook events, "provider kind" → count ("postmark soft_bounce": 2).
    pub bounces: BTreeMap<String, i64>,
    pub sent_last_24h: i64,
    pub next_due: Option<Timestamp>,
    pub workers: Vec<WorkerRow>,
    pub template_errors: BTreeMap<String, String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerRow {
    pub name: String,
    pub host: String,
    pub pid: i64,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    /// Set while this worker's SMTP relay is paused (circuit breaker open).
    pub relay_paused: Option<RelayPause>,
}

/// Why and since when a worker holds its sends back: the relay failed (refused
/// connection, 421 greeting, sender or relaying refused…) and probes have not got
/// through yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelayPause {
    pub reason: String,
    pub since: Timestamp,
    pub failed_probes: i64,
    pub next_probe_at: Timestamp,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SuppressionRow {
    pub email: String,
    pub reason: String,
    pub created_at: Timestamp,
}

const RESERVE_SQLITE: &str = "INSERT INTO smtp_rate (server, tat) VALUES ($1, $2 + $3)
 ON CONFLICT (server) DO UPDATE SET tat = MAX(smtp_rate.tat, $2) + $3 RETURNING tat";
const RESERVE_PG: &str = "INSERT INTO smtp_rate (server, tat) VALUES ($1, $2 + $3)
 ON CONFLICT (server) DO UPDATE SET tat = GREATEST(smtp_rate.tat, $2) + $3 RETURNING tat";

impl Store {
    /// Reserves the next send slot on `server` for a limit of one message per
    /// `interval_ms`, shared by every worker on this database. Returns when the message
    /// may go (at or after `now`).
    pub async fn reserve_send_slot(
        &self,
        server: &str,
        interval_ms: i64,
        now: Timestamp,
    ) -> Result<Timestamp> {
        let sql = if matches!(self.db, crate::store::Db::Sqlite(_)) {
            RESERVE_SQLITE
        } else {
            RESERVE_PG
        };
        let _turn = self.write_turn().await;
        with_db!(&self.db, p => {
            let tat: i64 = sqlx::query_scalar(sql).bind(server).bind(now.0).bind(interval_ms).fetch_one(p).await?;
            Ok(Timestamp(tat - interval_ms))
        })
    }

    pub async fn status(&self, now: Timestamp, live_since: Timestamp) -> Result<StatusReport> {
        let counts = self.counts().await?;
        let (followups, skipped_by_reason) = (counts.followups, counts.skipped_by_reason);
        let failed_by_reply = self.failed_by_reply().await?;
        let bounces = self.bounce_counts().await?;
        with_db!(&self.db, p => {
            let sent_last_24h: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM followups WHERE state = 'sent' AND sent_at > $1")
                .bind(now.0 - 86_400_000).fetch_one(p).await?;
            let next_due: Option<i64> = sqlx::query_scalar("SELECT MIN(next_at) FROM followups WHERE state IN ('scheduled', 'deferred')")
                .fetch_one(p).await?;
            let workers = sqlx::query("SELECT name, host, pid, started_at, heartbeat_at, relay_reason, relay_paused_at,
                                              relay_failed_probes, relay_next_probe_at FROM workers
                                       WHERE stopped_at IS NULL AND heartbeat_at >= $1 ORDER BY name")
                .bind(live_since.0).fetch_all(p).await?
                .iter().map(|r| -> Result<WorkerRow> {
                    let reason: Option<String> = r.try_get("relay_reason")?;
                    let relay_paused = match reason {
                        None => None,
                        Some(reason) => Some(RelayPause {
                            reason,
                            since: Timestamp(r.try_get::<Option<i64>, _>("relay_paused_at")?.unwrap_or_default()),
                            failed_probes: r.try_get::<Option<i64>, _>("relay_failed_probes")?.unwrap_or_default(),
                            next_probe_at: Timestamp(r.try_get::<Option<i64>, _>("relay_next_probe_at")?.unwrap_or_default()),
                        }),
                    };
                    Ok(WorkerRow {
                        name: r.try_get("name")?, host: r.try_get("host")?, pid: r.try_get("pid")?,
                        started_at: Timestamp(r.try_get("started_at")?), heartbeat_at: Timestamp(r.try_get("heartbeat_at")?),
                        relay_paused,
                    })
                }).collect::<Result<Vec<_>>>()?;
            let mut template_errors = BTreeMap::new();
            for r in sqlx::query("SELECT campaign, problem FROM template_errors ORDER BY campaign").fetch_all(p).await? {
                template_errors.insert(r.try_get("campaign")?, r.try_get("problem")?);
            }
            // Follow-ups held back by a template that failed to render for them.
            let held = "SELECT campaign, MIN(held) AS problem, COUNT(*) AS n FROM followups
                        WHERE held IS NOT NULL AND state = 'scheduled' GROUP BY campaign";
            for r in sqlx::query(held).fetch_all(p).await? {
                let (problem, n): (String, i64) = (r.try_get("problem")?, r.try_get("n")?);
                template_errors.insert(r.try_get("campaign")?, format!("template error: {problem} ({n} follow-up(s) waiting)"));
            }
            Ok(StatusReport { followups, skipped_by_reason, failed_by_reply, bounces, sent_last_24h, next_due: next_due.map(Timestamp), workers, template_errors })
        })
    }

    /// Failed follow-ups grouped by their SMTP reply ("550 5.1.1 user unknown": 3): the
    /// reply's first line, whitespace collapsed, every address masked as `<address>` (a
    /// reply naming its recipient groups with the others, and names nobody), cut to
    /// [`REPLY_GROUP_CHARS`]. Reads only the failed rows (partial index, migration 0008).
    pub async fn failed_by_reply(&self) -> Result<BTreeMap<String, i64>> {
        let sql = "SELECT smtp_reply, COUNT(*) AS n FROM followups WHERE state = 'failed' GROUP BY smtp_reply";
        let mut out = BTreeMap::new();
        with_db!(&self.db, p => {
            for r in sqlx::query(sql).fetch_all(p).await? {
                let reply: Option<String> = r.try_get("smtp_reply")?;
                let n: i64 = r.try_get("n")?;
                *out.entry(reply_group(reply.as_deref())).or_default() += n;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(out)
    }

    pub async fn register_worker(
        &self,
        name: &str,
        host: &str,
        pid: i64,
        now: Timestamp,
    ) -> Result<()> {
        let sql = "INSERT INTO workers (name, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $4)
                   ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, stopped_at = NULL";
        with_db!(&self.db, p => { sqlx::query(sql).bind(name).bind(host).bind(pid).bind(now.0).execute(p).await?; Ok(()) })
    }

    /// Records (or clears, with None) that this worker's relay is paused, for `status`.
    pub async fn set_worker_relay(&self, name: &str, pause: Option<&RelayPause>) -> Result<()> {
        let sql =
            "UPDATE workers SET relay_reason = $2, relay_paused_at = $3, relay_failed_probes = $4,
                   relay_next_probe_at = $5 WHERE name = $1";
        with_db!(&self.db, p => {
            sqlx::query(sql).bind(name).bind(pause.map(|r| r.reason.as_str())).bind(pause.map(|r| r.since.0))
                .bind(pause.map(|r| r.failed_probes)).bind(pause.map(|r| r.next_probe_at.0)).execute(p).await?;
            Ok(())
        })
    }

    pub async fn worker_stopped(&self, name: &str, now: Timestamp) -> Result<()> {
        with_db!(&self.db, p => {
            sqlx::query("UPDATE workers SET stopped_at = $2, heartbeat_at = $2 WHERE name = $1").bind(name).bind(now.0).execute(p).await?;
            Ok(())
        })
    }

    pub async fn suppress(&self, email: &str, reason: &str, now: Timestamp) -> Result<bool> {
        let sql = "INSERT INTO suppressions (email, reason, created_at) VALUES ($1, $2, $3)
                   ON CONFLICT (email) DO UPDATE SET reason = excluded.reason";
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(email.to_lowercase()).bind(reason).bind(now.0).execute(p).await?.rows_affected() > 0))
    }

    pub async fn unsuppress(&self, email: &str) -> Result<bool> {
        with_db!(&self.db, p => Ok(sqlx::query("DELETE FROM suppressions WHERE email = $1").bind(email.to_lowercase()).execute(p).await?.rows_affected() > 0))
    }

    pub async fn suppressions(&self) -> Result<Vec<SuppressionRow>> {
        with_db!(&self.db, p => {
            sqlx::query("SELECT email, reason, created_at FROM suppressions ORDER BY email").fetch_all(p).await?
                .iter().map(|r| -> Result<SuppressionRow> {
                    Ok(SuppressionRow { email: r.try_get("email")?, reason: r.try_get("reason")?, created_at: Timestamp(r.try_get("created_at")?) })
                }).collect()
        })
    }

    /// Marks the customer unsubscribed (idempotent); false when there is no such customer.
    pub async fn unsubscribe(&self, customer_id: &str, now: Timestamp) -> Result<bool> {
        let sql =
            "UPDATE customers SET unsubscribed_at = COALESCE(unsubscribed_at, $2) WHERE id = $1";
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(customer_id).bind(now.0).execute(p).await?.rows_affected() > 0))
    }

    /// Remembers (or clears, with None) the template problem that holds a campaign back.
    pub async fn set_template_error(
        &self,
        campaign: &str,
        problem: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        with_db!(&self.db, p => {
            match problem {
                Some(text) => sqlx::query("INSERT INTO template_errors (campaign, problem, at) VALUES ($1, $2, $3)
                                           ON CONFLICT (campaign) DO UPDATE SET problem = excluded.problem, at = excluded.at")
                    .bind(campaign).bind(text).bind(now.0).execute(p).await?,
                None => sqlx::query("DELETE FROM template_errors WHERE campaign = $1").bind(campaign).execute(p).await?,
            };
            Ok(())
        })
    }

    /// Records a webhook delivery id; false when it was seen before.
    pub async fn first_delivery(&self, id: &str, now: Timestamp) -> Result<bool> {
        let sql =
            "INSERT INTO webhook_deliveries (id, at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(id).bind(now.0).execute(p).await?.rows_affected() == 1))
    }
}

impl Store {
    /// Forgets a webhook delivery id, so a retry of a delivery that failed is processed.
    pub async fn forget_delivery(&self, id: &str) -> Result<()> {
        with_db!(&self.db, p => {
            sqlx::query("DELETE FROM webhook_deliveries WHERE id = $1").bind(id).execute(p).await?;
            Ok(())
        })
    }

    /// Counters and gauges for `/metrics`: the kept counts and the due-now range of the
    /// queue index; no scan of the whole ledger.
    pub async fn metrics(&self, now: Timestamp) -> Result<MetricsReport> {
        let counts = self.counts().await?;
        let sql_depth = "SELECT COUNT(*) FROM followups WHERE state IN ('scheduled', 'deferred') AND next_at <= $1";
        let queue_depth: i64 =
            with_db!(&self.db, p => sqlx::query_scalar(sql_depth).bind(now.0).fetch_one(p).await?);
        Ok(MetricsReport {
            queue_depth,
            ..counts
        })
    }

    /// The follow-up counts the ledger's triggers keep (migration 0005): by state, skip
    /// reason, error class of the last reply and latency bucket. A few dozen rows,
    /// however large the ledger.
    pub async fn counts(&self) -> Result<MetricsReport> {
        let sql = "SELECT state, reason, error_class, latency_bucket,
                CAST(SUM(n) AS BIGINT) AS n, CAST(SUM(latency_sum_ms) AS BIGINT) AS latency_sum_ms
            FROM (SELECT state, reason, error_class, latency_bucket, n, latency_sum_ms FROM followup_counts
                  UNION ALL
                  SELECT state, reason, error_class, latency_bucket, n, latency_sum_ms FROM followup_count_deltas) c
            GROUP BY state, reason, error_class, latency_bucket";
        let mut m = MetricsReport {
            followups: FollowupState::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), 0))
                .collect(),
            smtp_errors: ["4xx", "5xx", "connection"]
                .iter()
                .map(|c| (c.to_string(), 0))
                .collect(),
            ..MetricsReport::default()
        };
        let mut per_bucket = [0i64; LATENCY_BUCKETS.len() + 1];
        with_db!(&self.db, p => {
            for r in sqlx::query(sql).fetch_all(p).await? {
                let (state, reason, class): (String, String, String) =
                    (r.try_get("state")?, r.try_get("reason")?, r.try_get("error_class")?);
                let bucket: i64 = r.try_get::<i32, _>("latency_bucket")?.into();
                let (n, sum_ms): (i64, i64) = (r.try_get("n")?, r.try_get("latency_sum_ms")?);
                if n == 0 {
                    continue;
                }
                *m.followups.entry(state.clone()).or_default() += n;
                if state == "skipped" {
                    let reason = if reason.is_empty() { "unknown".to_owned() } else { reason };
                    *m.skipped_by_reason.entry(reason).or_default() += n;
                }
                if !class.is_empty() {
                    *m.smtp_errors.entry(class).or_default() += n;
                }
                if let Some(slot) = usize::try_from(bucket).ok().and_then(|b| per_bucket.get_mut(b)) {
                    *slot += n;
                    m.latency_count += n;
                    m.latency_sum_ms += sum_ms;
                }
            }
            Ok::<_, StoreError>(())
        })?;
        let mut cumulative = 0;
        m.latency_buckets = LATENCY_BUCKETS
            .iter()
            .zip(per_bucket)
            .map(|(bound, n)| {
                cumulative += n;
                (*bound, cumulative)
            })
            .collect();
        Ok(m)
    }
}

/// The longest group name of `failed_by_reply`, in characters.
pub const REPLY_GROUP_CHARS: usize = 120;

/// The group a failed follow-up's reply falls in (see [`Store::failed_by_reply`]).
pub fn reply_group(reply: Option<&str>) -> String {
    let line = reply.and_then(|r| r.lines().find(|l| !l.trim().is_empty()));
    let Some(line) = line else {
        return "(no reply)".to_owned();
    };
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|w| if w.contains('@') { "<address>" } else { w })
        .collect();
    let joined = words.join(" ");
    match joined.char_indices().nth(REPLY_GROUP_CHARS) {
        Some((i, _)) => format!("{}…", &joined[..i]),
        None => joined,
    }
}

/// Upper bounds (seconds) of the due → sent latency histogram.
pub const LATENCY_BUCKETS: [f64; 9] =
    [1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0];

#[cfg(test)]
mod tests {
    use super::reply_group;

    #[test]
    fn replies_group_without_addresses() {
        assert_eq!(
            reply_group(Some("550 5.1.1 <ann@example.com>: user unknown\r\nmore")),
            "550 5.1.1 <address> user unknown"
        );
        assert_eq!(
            reply_group(Some("  552   5.3.4 too big ")),
            "552 5.3.4 too big"
        );
        assert_eq!(reply_group(None), "(no reply)");
        assert_eq!(
            reply_group(Some("5".repeat(500).as_str())).chars().count(),
            121
        );
    }
}

#[derive(Debug, Clone, Default)]
pub struct MetricsReport {
    /// Follow-ups by state (every state present).
    pub followups: BTreeMap<String, i64>,
    /// Skipped follow-ups by reason ("unknown" when none was recorded).
    pub skipped_by_reason: BTreeMap<String, i64>,
    /// Follow-ups whose last SMTP reply was an error, by class (4xx, 5xx, connection).
    pub smtp_errors: BTreeMap<String, i64>,
    pub latency_count: i64,
    pub latency_sum_ms: i64,
    /// (upper bound in seconds, cumulative count).
    pub latency_buckets: Vec<(f64, i64)>,
    /// Scheduled or deferred follow-ups due now.
    pub queue_depth: i64,
}
