-- A worker whose SMTP relay failed (refused connection, 421 greeting, sender or relaying
-- refused) pauses its sends and probes; `status` shows why. NULL reason = relay up.
ALTER TABLE workers ADD COLUMN relay_reason TEXT;
ALTER TABLE workers ADD COLUMN relay_paused_at BIGINT;
ALTER TABLE workers ADD COLUMN relay_failed_probes BIGINT;
ALTER TABLE workers ADD COLUMN relay_next_probe_at BIGINT;
