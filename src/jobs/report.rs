//! "Did it help?": the report over the ledger and the click table, for `aftercart
//! report` and `GET /report`. The store reads the rows, `measure` computes; nothing is
//! attributed when an order arrives (import, API or webhook alike): attribution is
//! worked out here, at report time, from the clicks.

use super::Engine;
use crate::config::Settings;
use crate::domain::{CampaignName, Timestamp};
use crate::measure::{Report, ReportParams, build_report};
use crate::store::{Store, StoreError};
use std::time::Duration;

/// The report's period when none is asked for.
pub const DEFAULT_SINCE: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("unknown campaign {0:?} (see `aftercart campaign list`)")]
    UnknownCampaign(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Engine {
    /// The report on follow-ups due from `now − since` to now (the engine's clock), for
    /// one campaign or every configured one.
    pub async fn report(
        &self,
        campaign: Option<&str>,
        since: Duration,
    ) -> Result<Report, ReportError> {
        report(
            &self.store,
            &self.settings,
            self.clock.now(),
            campaign,
            since,
        )
        .await
    }
}

/// The report on follow-ups due from `now − since` to `now`, for one campaign or every
/// configured one (needs no model: `aftercart report` opens only the store).
pub async fn report(
    store: &Store,
    s: &Settings,
    now: Timestamp,
    campaign: Option<&str>,
    since: Duration,
) -> Result<Report, ReportError> {
    let campaigns: Vec<CampaignName> = match campaign {
        Some(name) => vec![
            s.campaign(name)
                .ok_or_else(|| ReportError::UnknownCampaign(name.to_owned()))?
                .name
                .clone(),
        ],
        None => s.campaigns.iter().map(|c| c.name.clone()).collect(),
    };
    let since = Timestamp(now.0.saturating_sub(since.as_millis() as i64));
    let input = store.report_input(since, now).await?;
    let params = ReportParams {
        campaigns,
        since,
        now,
        click_window: s.attribution.click_window,
        conversion_window: s.attribution.conversion_window,
        timezone: s.store.timezone,
        currency: s.store.currency.clone(),
    };
    Ok(build_report(&input, &params))
}

/// Orders attributed to any follow-up (every campaign, all time) and their revenue, for
/// `/metrics`. Worked out from the clicks at each call like the report, so it follows
/// status changes (a refunded order stops counting).
pub async fn attributed_totals(
    store: &Store,
    s: &Settings,
    now: Timestamp,
) -> Result<(u64, crate::domain::Money), StoreError> {
    let input = store.report_input(Timestamp(0), now).await?;
    let a = crate::measure::attribution::attribute(
        &input.followups,
        &input.clicks,
        &input.orders,
        s.attribution.click_window,
    );
    Ok((a.len() as u64, a.iter().map(|a| a.revenue).sum()))
}
