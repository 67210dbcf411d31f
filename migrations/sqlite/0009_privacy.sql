-- `forget` / Shopify customers/redact: the customer row stays (its id keeps the ledger's
-- keys meaningful) with its personal data erased; a later upsert of the same id changes
-- nothing. Data requests (customers/data_request) are recorded for the operator, without
-- the data itself (`aftercart export-customer` produces it).
ALTER TABLE customers ADD COLUMN forgotten_at BIGINT;
CREATE TABLE data_requests (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    source TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);
