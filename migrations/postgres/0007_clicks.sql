-- Hits on tracked links (`/r/{token}`) and on the optional open pixel: one row per
-- request, classified as it arrives (measure::token::classify). Only `click` and `open`
-- count in the report; `prefetch` (HEAD, or within 2 s of delivery) and `duplicate`
-- (within a minute of the token's last counted hit) are kept to show what was left out.
-- product_id is '' for the open pixel. source: a short hash of the client address and
-- user agent (no address is stored), to tell scanners from people.
CREATE TABLE clicks (
    id BIGSERIAL PRIMARY KEY,
    followup_id BIGINT NOT NULL,
    product_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX clicks_followup ON clicks (followup_id, product_id, at);
CREATE INDEX followups_due ON followups (due_at);
