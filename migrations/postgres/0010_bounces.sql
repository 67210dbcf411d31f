-- Bounces and complaints reported later by the sending provider's webhook
-- (`/webhooks/bounces/*`): the follow-up records the outcome, and every event is counted
-- by provider and kind (hard_bounce, soft_bounce, complaint) for `status`.
ALTER TABLE followups ADD COLUMN bounce TEXT;
CREATE TABLE bounce_counts (
    provider TEXT NOT NULL,
    kind TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (provider, kind)
);
