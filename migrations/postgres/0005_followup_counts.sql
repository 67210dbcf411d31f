-- Follow-up counts kept as the ledger changes, so /metrics and `status` read a few rows
-- instead of scanning every follow-up. One key per (state, skip reason, SMTP error class
-- of the last reply, latency bucket of a sent row).
--
-- Many workers change the ledger at once, so the statement-level triggers never update
-- a shared row: each statement appends its net changes, grouped by key, to
-- followup_count_deltas (no row locks, no waiting). Now and then (1 statement in 32) the
-- deltas are folded into followup_counts by whoever holds a try-lock, so the side table
-- stays small. Readers sum both tables.
CREATE TABLE followup_counts (
    state TEXT NOT NULL,
    reason TEXT NOT NULL,            -- skip reason of skipped rows, else ''
    error_class TEXT NOT NULL,       -- '4xx' | '5xx' | 'connection' for an unsent row with a reply, else ''
    latency_bucket INTEGER NOT NULL, -- sent rows: index of the first LATENCY_BUCKETS bound >= sent_at - due_at (9 = +Inf), else -1
    n BIGINT NOT NULL,
    latency_sum_ms BIGINT NOT NULL,
    PRIMARY KEY (state, reason, error_class, latency_bucket)
);
CREATE TABLE followup_count_deltas (
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    error_class TEXT NOT NULL,
    latency_bucket INTEGER NOT NULL,
    n BIGINT NOT NULL,
    latency_sum_ms BIGINT NOT NULL
);

-- The key of one follow-up row, in one place. The bucket bounds are LATENCY_BUCKETS in ms.
CREATE FUNCTION followup_count_key(
    st TEXT, rsn TEXT, reply TEXT, sent BIGINT, due BIGINT,
    OUT state TEXT, OUT reason TEXT, OUT error_class TEXT, OUT latency_bucket INTEGER, OUT latency_ms BIGINT
) LANGUAGE sql IMMUTABLE AS $$
    SELECT st,
        CASE WHEN st = 'skipped' THEN COALESCE(rsn, '') ELSE '' END,
        CASE WHEN st = 'sent' OR reply IS NULL THEN ''
             WHEN ltrim(reply) LIKE '4%' THEN '4xx'
             WHEN ltrim(reply) LIKE '5%' THEN '5xx'
             ELSE 'connection' END,
        CASE WHEN st <> 'sent' OR sent IS NULL THEN -1
             WHEN sent - due <= 1000 THEN 0
             WHEN sent - due <= 5000 THEN 1
             WHEN sent - due <= 30000 THEN 2
             WHEN sent - due <= 60000 THEN 3
             WHEN sent - due <= 300000 THEN 4
             WHEN sent - due <= 900000 THEN 5
             WHEN sent - due <= 3600000 THEN 6
             WHEN sent - due <= 21600000 THEN 7
             WHEN sent - due <= 86400000 THEN 8
             ELSE 9 END,
        CASE WHEN st = 'sent' AND sent IS NOT NULL THEN sent - due ELSE 0 END
$$;

-- Folds the committed deltas into followup_counts. One folder at a time (a try-lock, so
-- nobody waits); a folder never blocks a writer, which only appends deltas.
CREATE FUNCTION followup_counts_fold() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock(730586124205) THEN
        WITH d AS (DELETE FROM followup_count_deltas RETURNING *)
        INSERT INTO followup_counts (state, reason, error_class, latency_bucket, n, latency_sum_ms)
        SELECT state, reason, error_class, latency_bucket, SUM(n), SUM(latency_sum_ms)
        FROM d GROUP BY state, reason, error_class, latency_bucket
        ORDER BY state, reason, error_class, latency_bucket
        ON CONFLICT (state, reason, error_class, latency_bucket) DO UPDATE
        SET n = followup_counts.n + excluded.n, latency_sum_ms = followup_counts.latency_sum_ms + excluded.latency_sum_ms;
    END IF;
END $$;

CREATE FUNCTION followups_count_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO followup_count_deltas (state, reason, error_class, latency_bucket, n, latency_sum_ms)
        SELECT k.state, k.reason, k.error_class, k.latency_bucket, COUNT(*), SUM(k.latency_ms)
        FROM new_rows r CROSS JOIN LATERAL followup_count_key(r.state, r.reason, r.smtp_reply, r.sent_at, r.due_at) k
        GROUP BY 1, 2, 3, 4;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO followup_count_deltas (state, reason, error_class, latency_bucket, n, latency_sum_ms)
        SELECT c.state, c.reason, c.error_class, c.latency_bucket, SUM(c.n), SUM(c.n * c.latency_ms)
        FROM (SELECT k.*, 1 AS n FROM new_rows r
                  CROSS JOIN LATERAL followup_count_key(r.state, r.reason, r.smtp_reply, r.sent_at, r.due_at) k
              UNION ALL
              SELECT k.*, -1 AS n FROM old_rows r
                  CROSS JOIN LATERAL followup_count_key(r.state, r.reason, r.smtp_reply, r.sent_at, r.due_at) k) c
        GROUP BY 1, 2, 3, 4
        HAVING SUM(c.n) <> 0 OR SUM(c.n * c.latency_ms) <> 0;
    ELSE
        INSERT INTO followup_count_deltas (state, reason, error_class, latency_bucket, n, latency_sum_ms)
        SELECT k.state, k.reason, k.error_class, k.latency_bucket, -COUNT(*), -SUM(k.latency_ms)
        FROM old_rows r CROSS JOIN LATERAL followup_count_key(r.state, r.reason, r.smtp_reply, r.sent_at, r.due_at) k
        GROUP BY 1, 2, 3, 4;
    END IF;
    IF random() < 1.0 / 32 THEN
        PERFORM followup_counts_fold();
    END IF;
    RETURN NULL;
END $$;

-- Transition tables allow one event per trigger, hence three.
CREATE TRIGGER followups_count_insert AFTER INSERT ON followups
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION followups_count_changes();
CREATE TRIGGER followups_count_update AFTER UPDATE ON followups
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION followups_count_changes();
CREATE TRIGGER followups_count_delete AFTER DELETE ON followups
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION followups_count_changes();

-- The rows that exist already. CREATE TRIGGER above holds off every writer of followups
-- until this migration commits, so no change is missed or counted twice.
INSERT INTO followup_counts (state, reason, error_class, latency_bucket, n, latency_sum_ms)
SELECT k.state, k.reason, k.error_class, k.latency_bucket, COUNT(*), SUM(k.latency_ms)
FROM followups r CROSS JOIN LATERAL followup_count_key(r.state, r.reason, r.smtp_reply, r.sent_at, r.due_at) k
GROUP BY 1, 2, 3, 4;
