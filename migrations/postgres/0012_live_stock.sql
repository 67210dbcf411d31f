-- Live stock from Shopify webhooks. `stock_changed_at` (ms) marks products whose stock a
-- webhook changed, so every worker applies the change to its in-memory model between
-- rebuilds. Inventory items map `inventory_levels/update` to a product; levels are per
-- location, and a delivery older than the stored level changes nothing.
ALTER TABLE products ADD COLUMN stock_changed_at BIGINT;
CREATE INDEX products_stock_changed ON products (stock_changed_at) WHERE stock_changed_at IS NOT NULL;
CREATE TABLE shopify_inventory_items (
    inventory_item_id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL,
    -- The product's status is `active` (draft and archived products are not for sale).
    active BOOLEAN NOT NULL,
    -- `inventory_management` set: the quantity counts.
    tracked BOOLEAN NOT NULL,
    -- The variant's `inventory_quantity` in the last product delivery.
    quantity BIGINT
);
CREATE INDEX shopify_inventory_items_product ON shopify_inventory_items (product_id);
CREATE TABLE shopify_inventory_levels (
    inventory_item_id TEXT NOT NULL,
    location_id TEXT NOT NULL,
    available BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (inventory_item_id, location_id)
);
