//! Live stock: what Shopify's webhooks say about inventory between imports. Product
//! deliveries record their variants' inventory items; `inventory_levels/update` sets one
//! location's level and recomputes the product's `in_stock`. Every change stamps
//! `stock_changed_at`, which workers read to update their in-memory model.

use super::{Result, Store, with_db};
use crate::domain::Timestamp;

/// One variant of a Shopify product delivery, as stock sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryItem {
    /// Shopify's `inventory_item_id`, decimal.
    pub id: String,
    /// `inventory_management` set: its quantity counts.
    pub tracked: bool,
    /// `inventory_quantity`, when sent.
    pub quantity: Option<i64>,
}

/// One `inventory_levels/update` delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryLevel {
    pub item: String,
    pub location: String,
    /// None: not tracked at this location.
    pub available: Option<i64>,
    pub updated_at: Timestamp,
}

/// What a level delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelOutcome {
    /// No product delivery named this inventory item: nothing to map it to.
    UnknownItem,
    /// The stored level is newer (a late or repeated delivery): nothing changed.
    Stale,
    /// The level is stored; the product's stock is now `in_stock`.
    Applied { product_id: String, in_stock: bool },
}

const ITEMS_DELETE: &str = "DELETE FROM shopify_inventory_items WHERE product_id = $1";
const ITEM_INSERT: &str = "INSERT INTO shopify_inventory_items (inventory_item_id, product_id, active, tracked, quantity)
 VALUES ($1, $2, $3, $4, $5)
 ON CONFLICT (inventory_item_id) DO UPDATE SET product_id = excluded.product_id, active = excluded.active,
   tracked = excluded.tracked, quantity = excluded.quantity";
const MARK_CHANGED: &str = "UPDATE products SET in_stock = $2, stock_changed_at = $3 WHERE id = $1";
// Also the lock: deliveries for one product's variants are applied one after the other.
const ITEM_PRODUCT: &str = "UPDATE products SET stock_changed_at = $2
 WHERE id = (SELECT product_id FROM shopify_inventory_items WHERE inventory_item_id = $1) RETURNING id";
const LEVEL_UPSERT: &str = "INSERT INTO shopify_inventory_levels (inventory_item_id, location_id, available, updated_at)
 VALUES ($1, $2, $3, $4)
 ON CONFLICT (inventory_item_id, location_id) DO UPDATE SET available = excluded.available, updated_at = excluded.updated_at
 WHERE excluded.updated_at >= shopify_inventory_levels.updated_at";
// Per variant: the sum of its known levels, else the product delivery's quantity.
const PRODUCT_ITEMS: &str = "SELECT i.active, i.tracked, i.quantity,
   (SELECT COUNT(*) FROM shopify_inventory_levels l WHERE l.inventory_item_id = i.inventory_item_id),
   (SELECT CAST(COALESCE(SUM(l.available), 0) AS BIGINT) FROM shopify_inventory_levels l
     WHERE l.inventory_item_id = i.inventory_item_id)
 FROM shopify_inventory_items i WHERE i.product_id = $1";
const CHANGES: &str = "SELECT id, in_stock FROM products WHERE stock_changed_at >= $1";

impl Store {
    /// After a product delivery: its variants' inventory items (replacing the ones stored
    /// for the product) and the stock it says, stamped `now`.
    pub async fn record_inventory_items(
        &self,
        product_id: &str,
        active: bool,
        in_stock: bool,
        items: &[InventoryItem],
        now: Timestamp,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            sqlx::query(ITEMS_DELETE).bind(product_id).execute(&mut *tx).await?;
            for it in items {
                sqlx::query(ITEM_INSERT).bind(&it.id).bind(product_id).bind(active)
                    .bind(it.tracked).bind(it.quantity).execute(&mut *tx).await?;
            }
            sqlx::query(MARK_CHANGED).bind(product_id).bind(in_stock).bind(now.0)
                .execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Stores one location's level unless a newer one is stored, and recomputes the
    /// product's stock: in stock when it is active and a variant is untracked or has
    /// more than 0 available (its known levels summed, else its last delivered quantity).
    pub async fn record_inventory_level(
        &self,
        level: &InventoryLevel,
        now: Timestamp,
    ) -> Result<LevelOutcome> {
        let _turn = self.write_turn().await;
        with_db!(&self.db, p => {
            let mut tx = p.begin().await?;
            let product: Option<String> = sqlx::query_scalar(ITEM_PRODUCT).bind(&level.item)
                .bind(now.0).fetch_optional(&mut *tx).await?;
            let Some(product_id) = product else { return Ok(LevelOutcome::UnknownItem) };
            let stored = sqlx::query(LEVEL_UPSERT).bind(&level.item).bind(&level.location)
                .bind(level.available).bind(level.updated_at.0).execute(&mut *tx).await?;
            if stored.rows_affected() == 0 {
                return Ok(LevelOutcome::Stale);
            }
            let variants: Vec<(bool, bool, Option<i64>, i64, i64)> = sqlx::query_as(PRODUCT_ITEMS)
                .bind(&product_id).fetch_all(&mut *tx).await?;
            let in_stock = variants.iter().any(|&(active, tracked, quantity, levels, sum)| {
                let available = if levels > 0 { Some(sum) } else { quantity };
                active && (!tracked || available.is_none_or(|q| q > 0))
            });
            sqlx::query(MARK_CHANGED).bind(&product_id).bind(in_stock).bind(now.0)
                .execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(LevelOutcome::Applied { product_id, in_stock })
        })
    }

    /// Products whose stock a webhook changed at or after `since`: (id, in_stock).
    pub async fn stock_changes(&self, since: Timestamp) -> Result<Vec<(String, bool)>> {
        with_db!(&self.db, p => Ok(sqlx::query_as(CHANGES).bind(since.0).fetch_all(p).await?))
    }
}
