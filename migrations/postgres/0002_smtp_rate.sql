-- Shared send schedule per SMTP server (GCRA): `tat` is the theoretical arrival time of
-- the next message, in ms. Every worker on the database reserves its slots here.
CREATE TABLE smtp_rate (
    server TEXT PRIMARY KEY,
    tat BIGINT NOT NULL
);
