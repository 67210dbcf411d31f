-- When the source (Shopify's updated_at) last changed the order, in ms: an older record
-- changes nothing. NULL for orders whose source gives no such time.
ALTER TABLE orders ADD COLUMN updated_at BIGINT;
