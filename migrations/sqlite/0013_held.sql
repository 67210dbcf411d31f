-- A follow-up whose template failed to render for it stays `scheduled` and is held:
-- `held` keeps the problem (NULL when nothing holds it). It replaces finding held rows
-- by a `template error:` prefix of `smtp_reply`.
ALTER TABLE followups ADD COLUMN held TEXT;
UPDATE followups SET held = substr(smtp_reply, 17)
 WHERE state = 'scheduled' AND smtp_reply LIKE 'template error: %';
CREATE INDEX followups_held ON followups (campaign) WHERE held IS NOT NULL;
