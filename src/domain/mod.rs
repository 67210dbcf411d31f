//! Parsed domain values. Raw input (JSON, CSV, HTTP bodies) becomes these types at the
//! edge; inside the crate a value of one of these types is known to be well formed.
//! Pure: no I/O, no dependency on other modules of the crate.

mod campaign;
mod ids;
mod money;
mod records;
mod time;

pub use campaign::{Strategy, Trigger};
pub use ids::{CampaignName, CustomerId, EmailAddress, OrderId, ProductId};
pub use money::Money;
pub(crate) use records::kind as json_kind;
pub use records::{
    CategoryPath, Customer, Event, EventKind, FieldError, Order, OrderItem, OrderStatus, Product,
};
pub use time::{Timestamp, parse_duration, parse_rfc3339};
