//! The only module that orchestrates a send: claims due follow-ups from the ledger,
//! applies the rules, asks `recommend` for picks, `render` for the email and `mail` to
//! send it, and writes the outcome back.

pub mod clock;
mod compose;
pub mod policy;
mod worker;

pub use clock::Clock;
pub use compose::{Decision, Engine, Loaded, Prepared, load_model, message_id, watch_templates};
pub use worker::{RunOptions, RunSummary, Worker};
