//! What every template sees: [`EmailContext`] and realistic sample data for checks and
//! previews. Field names here are the template variables documented in
//! `docs/templates.md`; renaming one breaks shipped and customer templates.

use crate::domain::{Money, Timestamp};
use serde::Serialize;

/// Everything a template can use. Serialized once per email into a Tera context.
#[derive(Debug, Clone, Serialize)]
pub struct EmailContext {
    pub store: StoreInfo,
    pub customer: CustomerInfo,
    pub order: OrderInfo,
    /// The recommended products ("picks"), in the order the recommender ranked them.
    pub items: Vec<PickedItem>,
    /// Signed one-click unsubscribe link (absolute URL).
    pub unsubscribe_url: String,
    pub campaign: CampaignInfo,
    /// Hidden inbox preview text; a campaign's `preheader.txt`, when present, wins.
    pub preheader: Option<String>,
    /// The open pixel's URL, only when `attribution.open_pixel` is on (None otherwise,
    /// and in previews).
    pub open_pixel_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreInfo {
    pub name: String,
    pub base_url: String,
    pub postal_address: String,
    /// ISO 4217 code ("USD"); pass it to the `money` filter.
    pub currency: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CustomerInfo {
    pub id: String,
    pub name: Option<String>,
    /// First word of `name`, or "there" ("Hi there") when the name is unknown.
    pub first_name: String,
    pub email: String,
    /// BCP 47 tag ("en-US"); the caller substitutes a default when unknown.
    pub locale: String,
    /// IANA zone ("Europe/Berlin"); the caller substitutes the store's when unknown.
    pub timezone: String,
}

impl CustomerInfo {
    /// Builds the customer block, deriving `first_name` from `name`.
    pub fn new(
        id: impl Into<String>,
        name: Option<String>,
        email: impl Into<String>,
        locale: impl Into<String>,
        timezone: impl Into<String>,
    ) -> Self {
        let name = name.filter(|n| !n.trim().is_empty());
        Self {
            id: id.into(),
            first_name: first_name(name.as_deref()),
            name,
            email: email.into(),
            locale: locale.into(),
            timezone: timezone.into(),
        }
    }
}

/// "Ada Lovelace" → "Ada"; no name → "there".
pub fn first_name(name: Option<&str>) -> String {
    name.and_then(|n| n.split_whitespace().next())
        .unwrap_or("there")
        .to_owned()
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderInfo {
    pub id: String,
    /// Minor units (cents).
    pub total: Money,
    /// Serialized as an RFC 3339 string in UTC ("2024-06-01T03:36:35Z").
    pub completed_at: Timestamp,
    pub items: Vec<OrderLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderLine {
    pub product_id: String,
    pub title: String,
    pub quantity: u32,
    /// Minor units (cents).
    pub unit_price: Money,
    pub url: String,
}

/// One recommended product.
#[derive(Debug, Clone, Serialize)]
pub struct PickedItem {
    pub product_id: String,
    pub title: String,
    /// Minor units (cents).
    pub price: Money,
    /// Product page (absolute); the caller falls back to the store URL when the catalog
    /// has none.
    pub url: String,
    pub image_url: Option<String>,
    /// Why it was picked, written for the customer.
    pub reason: String,
    pub category: Option<String>,
    pub brand: Option<String>,
    /// A guess for thin data (for upgrades: a popular pricier choice), not something
    /// customers were seen doing; templates must not say "customers upgraded" for it.
    pub fallback: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignInfo {
    pub name: String,
    /// "complements", "upgrades" or "enhance".
    pub strategy: String,
}

/// Realistic data for `templates check` and previews without a database. One title
/// contains `<` and `&` so escaping mistakes show up.
pub fn sample_context(campaign: &str, strategy: &str) -> EmailContext {
    let base = "https://shop.example.com";
    let upgrades = strategy == "upgrades";
    let item =
        |id: &str, title: &str, cents: i64, reason: &str, cat: &str, brand: &str| PickedItem {
            product_id: id.to_owned(),
            title: title.to_owned(),
            price: Money::from_minor(cents),
            url: format!("{base}/products/{id}"),
            image_url: Some(format!("{base}/images/{id}.jpg")),
            reason: reason.to_owned(),
            category: Some(cat.to_owned()),
            brand: Some(brand.to_owned()),
            fallback: false,
        };
    let items = if upgrades {
        vec![
            item(
                "P00420",
                "Lumix S5 II Mirrorless Camera",
                199_900,
                "Customers who bought the G7 upgraded to this within a year",
                "Cameras > Mirrorless",
                "Panasonic",
            ),
            PickedItem {
                fallback: true,
                ..item(
                    "P00431",
                    "Tripod Pro <Carbon> & Ball Head",
                    24_950,
                    "A sturdier step up from your travel tripod",
                    "Accessories > Tripods",
                    "Benro",
                )
            },
        ]
    } else {
        vec![
            item(
                "P00107",
                "Cable <USB-C> & more",
                1_999,
                "Charges and transfers from your new camera",
                "Accessories > Cables",
                "Anker",
            ),
            item(
                "P00233",
                "64 GB SDXC UHS-II Card",
                4_950,
                "Fits your camera and keeps up with 4K video",
                "Accessories > Memory Cards",
                "SanDisk",
            ),
            PickedItem {
                image_url: None,
                brand: None,
                ..item(
                    "P00301",
                    "Padded Camera Sling Bag",
                    3_900,
                    "Room for your camera and two lenses",
                    "Bags",
                    "",
                )
            },
        ]
    };
    EmailContext {
        store: StoreInfo {
            name: "Northwind Cameras".to_owned(),
            base_url: base.to_owned(),
            postal_address:
                "Northwind Cameras Ltd, 12 Harbour Street, Bristol BS1 4XX, United Kingdom"
                    .to_owned(),
            currency: "USD".to_owned(),
        },
        customer: CustomerInfo::new(
            "C000042",
            Some("Ada Lovelace".to_owned()),
            "ada@example.com",
            "en-US",
            "America/New_York",
        ),
        order: OrderInfo {
            id: "O00001234".to_owned(),
            total: Money::from_minor(64_900),
            // 2024-06-01T03:36:35Z: still May 31 in New York.
            completed_at: Timestamp(1_717_212_995_000),
            items: vec![OrderLine {
                product_id: "P00017".to_owned(),
                title: "Lumix G7 Mirrorless Camera".to_owned(),
                quantity: 1,
                unit_price: Money::from_minor(64_900),
                url: format!("{base}/products/P00017"),
            }],
        },
        items,
        unsubscribe_url: format!("{base}/unsubscribe/sample-token"),
        campaign: CampaignInfo {
            name: campaign.to_owned(),
            strategy: strategy.to_owned(),
        },
        preheader: None,
        open_pixel_url: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_name_falls_back_to_there() {
        assert_eq!(first_name(Some("Ada Lovelace")), "Ada");
        assert_eq!(first_name(None), "there");
        assert_eq!(
            CustomerInfo::new("C", Some("  ".into()), "e", "en", "UTC").first_name,
            "there"
        );
        let json = serde_json::to_value(sample_context("upgrade", "upgrades")).unwrap();
        assert_eq!(json["order"]["total"], 64_900);
        assert_eq!(json["order"]["completed_at"], "2024-06-01T03:36:35Z");
        assert_eq!(json["customer"]["first_name"], "Ada");
    }
}
