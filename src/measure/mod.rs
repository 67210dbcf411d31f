//! Measuring whether the emails help: signed tracked links and the click rules
//! ([`token`]), holdout groups ([`holdout`]), last-click attribution of orders
//! ([`attribution`]), and the report comparing recipients with the holdout ([`report`],
//! as JSON, a text table or a self-contained HTML page, [`html`]).
//!
//! Pure code: no I/O, no clock of its own. The store fills [`input::ReportInput`] (the
//! queries are listed there); `http` and `cli` call these functions.

pub mod attribution;
pub mod holdout;
pub mod html;
pub mod input;
pub mod report;
mod stats;
pub mod token;

pub use crate::domain::HoldoutShare;
pub use holdout::in_holdout;
pub use input::{ClickFact, FollowupFact, OrderFact, Outcome, ReportInput, UnsubscribeFact};
pub use report::{Report, ReportParams, build as build_report};
