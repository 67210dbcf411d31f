//! What gets scheduled, besides the worker's own retries: the campaign rules that give
//! an imported order its follow-ups ([`schedule_rules`]), and marketing's one-off sends
//! ([`trigger`]): a segment of customers (buyers of a product within a window, or all
//! consenting customers), one follow-up each, keyed so that repeating the same trigger
//! sends nothing twice. Both faces (`cli`, `http`) call these; the dry run asks the
//! same rules the worker applies ([`Engine::decide`]).
//!
//! The key is the trigger id (campaign, product, window and UTC day, or an explicit id
//! from the API) stored with the campaign name as `NAME#TRIGGER_ID` beside the
//! customer's latest order: the ledger's unique (order, campaign) then means "once per
//! (trigger, customer)".

use super::{Decision, Engine};
use crate::config::Settings;
use crate::domain::ScheduleRule;
use crate::domain::{CampaignKey, ProductId, Timestamp};
use crate::store::StoreError;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// The enabled campaigns' rules for scheduling an order's follow-ups (import, API,
/// webhook).
pub fn schedule_rules(s: &Settings) -> Vec<ScheduleRule> {
    s.campaigns
        .iter()
        .filter(|c| c.enabled)
        .map(|c| ScheduleRule {
            campaign: c.name.clone(),
            trigger: c.trigger,
            delay: c.delay,
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("no campaign named {0:?} in the config")]
    UnknownCampaign(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TriggerReport {
    pub campaign: String,
    pub trigger_id: String,
    pub dry_run: bool,
    pub segment: usize,
    /// Follow-ups newly scheduled (0 on a dry run or a repeated trigger).
    pub scheduled: usize,
    pub already_scheduled: usize,
    /// Dry run only: what the rules would do now, by outcome.
    pub outcomes: BTreeMap<String, usize>,
    pub sample: Option<SampleEmail>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleEmail {
    pub to: String,
    pub subject: String,
    pub text: String,
}

impl TriggerReport {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "campaign {} (trigger {}): {} customer(s) in the segment",
            self.campaign, self.trigger_id, self.segment
        );
        if self.dry_run {
            s.push_str("\ndry run, nothing scheduled or sent:");
            for (k, v) in &self.outcomes {
                s.push_str(&format!("\n  {k:<24} {v}"));
            }
            if let Some(e) = &self.sample {
                s.push_str(&format!(
                    "\nsample email to {}\nSubject: {}\n\n{}",
                    e.to, e.subject, e.text
                ));
            }
        } else {
            s.push_str(&format!(
                "\n{} scheduled, {} already scheduled by this trigger",
                self.scheduled, self.already_scheduled
            ));
        }
        s
    }
}

pub fn trigger_id(
    name: &str,
    bought: Option<&ProductId>,
    since: Duration,
    now: Timestamp,
) -> String {
    let day = now.rfc3339()[..10].to_owned();
    let mut h = Sha256::new();
    h.update(format!(
        "{name}\n{}\n{}\n{day}",
        bought.map(|b| b.as_str()).unwrap_or("*"),
        since.as_secs()
    ));
    hex::encode(&h.finalize()[..6])
}

pub async fn trigger(
    engine: &Engine,
    name: &str,
    bought: Option<&ProductId>,
    since: Duration,
    dry_run: bool,
) -> Result<TriggerReport, TriggerError> {
    let now = engine.clock.now();
    let id = trigger_id(name, bought, since, now);
    trigger_with_id(engine, name, bought, since, dry_run, &id).await
}

pub async fn trigger_with_id(
    engine: &Engine,
    name: &str,
    bought: Option<&ProductId>,
    since: Duration,
    dry_run: bool,
    id: &str,
) -> Result<TriggerReport, TriggerError> {
    let campaign = engine
        .settings
        .campaign(name)
        .ok_or_else(|| TriggerError::UnknownCampaign(name.to_owned()))?;
    let now = engine.clock.now();
    let segment = engine.store.segment(bought, now.minus(since)).await?;
    let key = CampaignKey::triggered(campaign.name.clone(), id);
    let stored_name = key.to_string();
    let mut report = TriggerReport {
        campaign: campaign.name.to_string(),
        trigger_id: id.to_owned(),
        dry_run,
        segment: segment.len(),
        scheduled: 0,
        already_scheduled: 0,
        outcomes: BTreeMap::new(),
        sample: None,
    };
    for (customer, order) in &segment {
        if dry_run {
            let outcome = match engine.decide(order.as_str(), &key, now).await? {
                Decision::Send(p) => {
                    if report.sample.is_none() {
                        report.sample = Some(SampleEmail {
                            to: p.email.to.clone(),
                            subject: p.email.subject.clone(),
                            text: p.email.text.clone(),
                        });
                    }
                    "would_send".to_owned()
                }
                Decision::Skip(reason) => format!("skipped: {reason}"),
                Decision::Defer(_) => "would_defer".to_owned(),
                Decision::TemplateError(_) => "template_error".to_owned(),
            };
            *report.outcomes.entry(outcome).or_default() += 1;
        } else if engine
            .store
            .schedule_one(order.as_str(), &stored_name, customer.as_str(), now, now)
            .await?
        {
            report.scheduled += 1;
        } else {
            report.already_scheduled += 1;
        }
    }
    Ok(report)
}
