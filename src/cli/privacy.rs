//! `forget` and `export-customer`: a customer's right to erasure and to their data.

use super::{CliError, Io};
use crate::app::open_store;
use crate::config::Settings;
use crate::domain::Timestamp;

fn nobody(who: &str) -> CliError {
    CliError::BadInput(format!("no customer with id or email {who:?}"))
}

pub(super) async fn forget(
    s: &Settings,
    who: &str,
    json: bool,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let who = who.trim();
    if who.is_empty() {
        return Err(CliError::Usage("forget: CUSTOMER_ID|EMAIL is empty".into()));
    }
    let store = open_store(s).await?;
    let done = store.forget(who, Timestamp::now()).await?;
    if done.is_empty() {
        return Err(nobody(who));
    }
    if json {
        writeln!(io.out, "{}", serde_json::json!({ "forgotten": done }))?;
        return Ok(());
    }
    for f in &done {
        if f.erased {
            writeln!(
                io.out,
                "customer {}: personal data erased ({} event(s) deleted, {} pending follow-up(s) skipped)",
                f.customer_id, f.events_deleted, f.followups_skipped
            )?;
        } else {
            writeln!(io.out, "customer {}: already forgotten", f.customer_id)?;
        }
    }
    Ok(())
}

pub(super) async fn export(s: &Settings, who: &str, io: &mut Io<'_>) -> Result<(), CliError> {
    let who = who.trim();
    if who.is_empty() {
        return Err(CliError::Usage(
            "export-customer: CUSTOMER_ID|EMAIL is empty".into(),
        ));
    }
    let store = open_store(s).await?;
    let customers = store.export_customer(who).await?;
    if customers.is_empty() {
        return Err(nobody(who));
    }
    writeln!(
        io.out,
        "{}",
        serde_json::json!({ "exported_at": Timestamp::now().rfc3339(), "customers": customers })
    )?;
    Ok(())
}
