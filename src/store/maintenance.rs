//! What the periodic jobs write: the once-per-tick guard, retention compaction and the
//! worker registry sweep.

use super::{Result, Store, with_db};
use crate::domain::Timestamp;

/// Rows compacted per statement: a long write would hold SQLite's single writer.
const COMPACT_CHUNK: i64 = 2_000;

impl Store {
    /// Takes `tick` of `job` for `owner`: true for exactly one caller per (job, tick),
    /// whichever process and host it runs on.
    pub async fn claim_tick(
        &self,
        job: &str,
        tick: i64,
        owner: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let sql = "INSERT INTO periodic_runs (job, tick, owner, started_at) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (job, tick) DO NOTHING";
        let _turn = self.write_turn().await;
        with_db!(&self.db, p => Ok(sqlx::query(sql).bind(job).bind(tick).bind(owner).bind(now.0)
            .execute(p).await?.rows_affected() == 1))
    }

    /// Who ran each tick of `job`, oldest first: (tick, owner).
    pub async fn periodic_runs(&self, job: &str) -> Result<Vec<(i64, String)>> {
        let sql = "SELECT tick, owner FROM periodic_runs WHERE job = $1 ORDER BY tick";
        with_db!(&self.db, p => Ok(sqlx::query_as::<_, (i64, String)>(sql).bind(job).fetch_all(p).await?))
    }

    /// Compacts follow-ups that ended (sent, skipped, failed) before `before`: the email's
    /// items, Message-ID and a sent row's SMTP reply are dropped; the row keeps its
    /// (order, campaign) key, state, reason, times and a failed row's reply, so a replayed
    /// import still finds it and sends nothing. Returns how many rows were compacted.
    pub async fn compact_ended(&self, before: Timestamp) -> Result<u64> {
        let sql = "UPDATE followups SET items = NULL, message_id = NULL,
                       smtp_reply = CASE WHEN state = 'failed' THEN smtp_reply ELSE NULL END
                   WHERE id IN (SELECT id FROM followups
                       WHERE next_at IS NULL AND updated_at < $1 AND state IN ('sent', 'skipped', 'failed')
                         AND (items IS NOT NULL OR message_id IS NOT NULL OR (state <> 'failed' AND smtp_reply IS NOT NULL))
                       LIMIT $2)";
        let mut total = 0;
        loop {
            let n = {
                let _turn = self.write_turn().await;
                with_db!(&self.db, p => sqlx::query(sql).bind(before.0).bind(COMPACT_CHUNK).execute(p).await?.rows_affected())
            };
            total += n;
            if n < COMPACT_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Forgets workers not heard from since `before` (every process start registers a new
    /// name) and periodic-run records older than `before`.
    pub async fn sweep_registry(&self, before: Timestamp) -> Result<u64> {
        let _turn = self.write_turn().await;
        with_db!(&self.db, p => {
            let workers = sqlx::query("DELETE FROM workers WHERE heartbeat_at < $1").bind(before.0).execute(p).await?.rows_affected();
            sqlx::query("DELETE FROM periodic_runs WHERE started_at < $1").bind(before.0).execute(p).await?;
            Ok(workers)
        })
    }
}
