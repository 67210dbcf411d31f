-- aftercart schema (SQLite). Times are milliseconds since the Unix epoch (UTC), money is
-- minor units (cents) of the store currency.

CREATE TABLE products (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    url TEXT,
    image_url TEXT,
    price BIGINT NOT NULL,
    currency TEXT NOT NULL,
    category TEXT,
    brand TEXT,
    in_stock BOOLEAN NOT NULL,
    compatible_with TEXT NOT NULL, -- JSON array of product ids
    tags TEXT NOT NULL             -- JSON array of strings
);

CREATE TABLE customers (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT,
    timezone TEXT,
    locale TEXT,
    marketing_consent BOOLEAN NOT NULL,
    unsubscribed_at BIGINT
);
CREATE INDEX customers_email ON customers (email);

CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    delivered_at BIGINT,
    total BIGINT NOT NULL,
    currency TEXT NOT NULL,
    items TEXT NOT NULL -- JSON array of {product_id, quantity, unit_price}
);
CREATE INDEX orders_customer ON orders (customer_id, created_at);

CREATE TABLE events (
    customer_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (customer_id, at, product_id, kind)
) WITHOUT ROWID;

-- The ledger, and the queue: one row per (order, campaign), whatever repeats.
-- next_at is when a worker may take the row next (due time, retry time or lease
-- expiry); NULL once the row is final.
CREATE TABLE followups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    campaign TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    due_at BIGINT NOT NULL,
    next_at BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    message_id TEXT,
    smtp_reply TEXT,
    sent_at BIGINT,
    items TEXT, -- JSON array of the product ids that were emailed
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (order_id, campaign)
);
CREATE INDEX followups_next ON followups (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX followups_customer_sent ON followups (customer_id, sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX followups_state ON followups (state);

CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at BIGINT
);

CREATE TABLE suppressions (
    email TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE template_errors (
    campaign TEXT PRIMARY KEY,
    problem TEXT NOT NULL,
    at BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL
);
