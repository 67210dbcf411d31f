//! The only module that orchestrates a send: claims due follow-ups from the ledger,
//! applies the rules, asks `recommend` for picks, `render` for the email and `mail` to
//! send it, and writes the outcome back. It also says what gets scheduled
//! (`schedule`: the campaign rules applied to imported orders, marketing's triggers).

pub mod clock;
mod compose;
pub mod periodic;
pub mod policy;
mod report;
mod runtime;
mod schedule;
pub mod stages;
mod worker;

pub use clock::Clock;
pub use compose::{Decision, Engine, Loaded, Prepared, load_model, message_id, watch_templates};
pub use report::{DEFAULT_SINCE as DEFAULT_REPORT_SINCE, ReportError, attributed_totals, report};
pub use schedule::{
    SampleEmail, TriggerError, TriggerReport, schedule_rules, trigger, trigger_id, trigger_with_id,
};
pub use stages::{Stage, StageFigure, StageTimes};
pub use worker::{RunOptions, RunSummary, Worker};
