-- Follow-up counts kept as the ledger changes, so /metrics and `status` read a few rows
-- instead of scanning every follow-up. One row per (state, skip reason, SMTP error
-- class of the last reply, latency bucket of a sent row); `n` may reach 0, never less.
-- followup_count_deltas is PostgreSQL's append-only side table; it stays empty here
-- and exists so both engines read the counts with the same query.
CREATE TABLE followup_counts (
    state TEXT NOT NULL,
    reason TEXT NOT NULL,          -- skip reason of skipped rows, else ''
    error_class TEXT NOT NULL,     -- '4xx' | '5xx' | 'connection' for an unsent row with a reply, else ''
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

-- Inserting a row (n = +1 or -1) into this view counts it: the key is computed in one
-- place, the INSTEAD OF trigger below. The bucket bounds are LATENCY_BUCKETS in ms.
CREATE VIEW followup_count_input AS
    SELECT state, reason, smtp_reply, sent_at, due_at, 0 AS n FROM followups WHERE 0;

CREATE TRIGGER followup_count_input_insert INSTEAD OF INSERT ON followup_count_input
BEGIN
    INSERT INTO followup_counts (state, reason, error_class, latency_bucket, n, latency_sum_ms)
    VALUES (
        new.state,
        CASE WHEN new.state = 'skipped' THEN COALESCE(new.reason, '') ELSE '' END,
        CASE WHEN new.state = 'sent' OR new.smtp_reply IS NULL THEN ''
             WHEN ltrim(new.smtp_reply) LIKE '4%' THEN '4xx'
             WHEN ltrim(new.smtp_reply) LIKE '5%' THEN '5xx'
             ELSE 'connection' END,
        CASE WHEN new.state <> 'sent' OR new.sent_at IS NULL THEN -1
             WHEN new.sent_at - new.due_at <= 1000 THEN 0
             WHEN new.sent_at - new.due_at <= 5000 THEN 1
             WHEN new.sent_at - new.due_at <= 30000 THEN 2
             WHEN new.sent_at - new.due_at <= 60000 THEN 3
             WHEN new.sent_at - new.due_at <= 300000 THEN 4
             WHEN new.sent_at - new.due_at <= 900000 THEN 5
             WHEN new.sent_at - new.due_at <= 3600000 THEN 6
             WHEN new.sent_at - new.due_at <= 21600000 THEN 7
             WHEN new.sent_at - new.due_at <= 86400000 THEN 8
             ELSE 9 END,
        new.n,
        CASE WHEN new.state = 'sent' AND new.sent_at IS NOT NULL THEN new.n * (new.sent_at - new.due_at) ELSE 0 END
    )
    ON CONFLICT (state, reason, error_class, latency_bucket)
    DO UPDATE SET n = n + excluded.n, latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms;
END;

CREATE TRIGGER followups_count_insert AFTER INSERT ON followups
BEGIN
    INSERT INTO followup_count_input VALUES (new.state, new.reason, new.smtp_reply, new.sent_at, new.due_at, 1);
END;

CREATE TRIGGER followups_count_update AFTER UPDATE OF state, reason, smtp_reply, sent_at, due_at ON followups
BEGIN
    INSERT INTO followup_count_input VALUES (old.state, old.reason, old.smtp_reply, old.sent_at, old.due_at, -1);
    INSERT INTO followup_count_input VALUES (new.state, new.reason, new.smtp_reply, new.sent_at, new.due_at, 1);
END;

CREATE TRIGGER followups_count_delete AFTER DELETE ON followups
BEGIN
    INSERT INTO followup_count_input VALUES (old.state, old.reason, old.smtp_reply, old.sent_at, old.due_at, -1);
END;

-- The rows that exist already.
INSERT INTO followup_count_input SELECT state, reason, smtp_reply, sent_at, due_at, 1 FROM followups;
