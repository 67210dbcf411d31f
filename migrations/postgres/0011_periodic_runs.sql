-- Periodic jobs (apalis-cron ticks: model rebuild, maintenance). Every worker process
-- fires the same ticks; the one whose insert of (job, tick) succeeds runs it, so a tick
-- runs once across all processes sharing the database.
CREATE TABLE periodic_runs (
    job TEXT NOT NULL,
    tick BIGINT NOT NULL,
    owner TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (job, tick)
);
-- Compaction of ended follow-ups (worker.retention) looks for them by age.
CREATE INDEX followups_ended_updated ON followups (updated_at) WHERE next_at IS NULL;
