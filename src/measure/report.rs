//! "Did it help?": per campaign and in total, what was sent, clicked and bought, and how
//! the customers who got the emails compare with the holdout who did not.
//!
//! The units are follow-ups due in the period `[since, now)`:
//! - `sent`: sent follow-ups; `clicks`: their `click` hits (prefetches and duplicates
//!   left out, `prefetches` says how many scanner fetches were); `click_rate`: the
//!   share of sent follow-ups clicked at least once.
//! - `unsubscribes`: unsubscribes in the period blamed on the last email sent to that
//!   customer before it (the unsubscribe link names no campaign).
//! - `attributed_orders`/`_revenue`: orders attributed to a sent follow-up
//!   ([`super::attribution`]); `recommended_revenue`: the picked items among them;
//!   `revenue_per_recipient`: attributed revenue / sent (each email is one recipient,
//!   as in Klaviyo's figure).
//! - `recipients` / `control`: the customers with a sent follow-up, and those held out
//!   (and sent none). Their `orders` are the paid orders placed in the
//!   `conversion_window` (default 14 days) after the due time of one of their
//!   follow-ups, whether they clicked or not; `conversion` = orders / customers; `aov` =
//!   the mean total of those orders. `uplift.aov_diff` = recipients' AOV − control's,
//!   with Welch's 95 % interval (each order one observation).
//!
//! Money is summed exactly; means and intervals are rounded to cents (half away from
//! zero). A figure that cannot be computed (no orders, fewer than two orders on a side
//! for the interval) is `null`, never a made-up 0.

use super::attribution::{Attribution, attribute};
use super::input::{FollowupFact, Outcome, ReportInput};
use super::stats::welch_ci95;
use super::token::HitKind;
use crate::domain::{CampaignName, CustomerId, Money, ProductId, Timestamp};
use chrono::{Datelike, NaiveDate};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

/// The default conversion window: orders within 14 days after a follow-up's due time.
pub const DEFAULT_CONVERSION_WINDOW: Duration = Duration::from_secs(14 * 86_400);
/// Up to this span the series has a point per day, beyond it one per week.
const DAILY_UP_TO_DAYS: i64 = 62;

/// What to report on.
#[derive(Debug, Clone)]
pub struct ReportParams {
    /// The rows, in this order (every configured campaign, or the one `--campaign`
    /// names). Follow-ups of other campaigns still compete for attribution (last click
    /// wins) but show in no row and not in the total.
    pub campaigns: Vec<CampaignName>,
    pub since: Timestamp,
    pub now: Timestamp,
    pub click_window: Duration,
    pub conversion_window: Duration,
    /// Where days begin for the series (the store's time zone).
    pub timezone: chrono_tz::Tz,
    /// The store currency, for people reading the figures.
    pub currency: String,
}

/// A signed amount in cents, for differences ("-1.50").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Signed(pub i64);

impl std::fmt::Display for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", a / 100, a % 100)
    }
}

impl Serialize for Signed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn money<S: Serializer>(m: &Money, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&m.decimal())
}

fn opt_money<S: Serializer>(m: &Option<Money>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(&m.decimal()),
        None => s.serialize_none(),
    }
}

fn humane<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humane_duration(*d))
}

/// "5d", "12h", "90m", "30s".
fn humane_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Day,
    Week,
}

/// The whole report; serialises to the `report --json` shape of SPEC §8.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub since: Timestamp,
    pub until: Timestamp,
    pub currency: String,
    #[serde(serialize_with = "humane")]
    pub click_window: Duration,
    #[serde(serialize_with = "humane")]
    pub conversion_window: Duration,
    /// Of every `series`.
    pub granularity: Granularity,
    pub campaigns: Vec<Figures>,
    pub total: Figures,
}

/// The figures of one campaign, or of all (`total`, without a name).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<CampaignName>,
    pub sent: u64,
    pub clicks: u64,
    /// Sent follow-ups clicked at least once.
    pub clicked: u64,
    pub click_rate: Option<f64>,
    pub prefetches: u64,
    pub unsubscribes: u64,
    /// Customers in the control group.
    pub holdout: u64,
    pub attributed_orders: u64,
    #[serde(serialize_with = "money")]
    pub attributed_revenue: Money,
    #[serde(serialize_with = "money")]
    pub recommended_revenue: Money,
    #[serde(serialize_with = "opt_money")]
    pub revenue_per_recipient: Option<Money>,
    pub recipients: Group,
    pub control: Group,
    pub uplift: Uplift,
    /// The picked products bought in attributed orders, most revenue first.
    pub picked_bought: Vec<PickedBought>,
    pub series: Vec<Point>,
}

/// Recipients or control: their orders in the conversion window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub customers: u64,
    pub orders: u64,
    #[serde(serialize_with = "money")]
    pub revenue: Money,
    #[serde(serialize_with = "opt_money")]
    pub aov: Option<Money>,
    /// Orders per customer.
    pub conversion: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uplift {
    pub aov_diff: Option<Signed>,
    pub aov_diff_ci95: Option<[Signed; 2]>,
    pub conversion_diff: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PickedBought {
    pub product_id: ProductId,
    /// Sent follow-ups that showed it.
    pub picked: u64,
    /// Clicks on its link.
    pub clicks: u64,
    /// Attributed orders that contain it.
    pub orders: u64,
    pub quantity: u64,
    #[serde(serialize_with = "money")]
    pub revenue: Money,
}

/// One step of the time series: follow-ups sent in it and what they earned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// First day of the step, in the store's time zone ("2025-06-02").
    pub start: NaiveDate,
    pub sent: u64,
    #[serde(serialize_with = "money")]
    pub attributed_revenue: Money,
    #[serde(serialize_with = "opt_money")]
    pub revenue_per_recipient: Option<Money>,
}

/// num / den rounded half away from zero (den > 0).
fn div_round(num: i128, den: i128) -> i64 {
    let q = (num.abs() * 2 + den) / (den * 2);
    (if num < 0 { -q } else { q }) as i64
}

fn per(total: Money, n: u64) -> Option<Money> {
    (n > 0).then(|| Money::from_minor(div_round(i128::from(total.minor()), i128::from(n))))
}

/// A share or rate, rounded to 4 decimals so the JSON shows 0.3333, not 0.333333…
fn rate(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| (num as f64 / den as f64 * 10_000.0).round() / 10_000.0)
}

/// Computes the report. Pure: the same input gives the same report.
pub fn build(input: &ReportInput, p: &ReportParams) -> Report {
    let attributions = attribute(
        &input.followups,
        &input.clicks,
        &input.orders,
        p.click_window,
    );
    let listed = |f: &&FollowupFact| {
        f.due_at >= p.since && f.due_at < p.now && p.campaigns.contains(&f.campaign)
    };
    let first_sent = input
        .followups
        .iter()
        .filter(listed)
        .filter_map(FollowupFact::sent_at)
        .min();
    let ctx = Ctx {
        input,
        p,
        attributions,
        blamed: blame_unsubscribes(input, p),
        steps: first_sent
            .map(|first| Steps::new(first.max(p.since), p.now, p.timezone))
            .unwrap_or_else(|| Steps::empty(p.timezone)),
    };
    let select = |pred: &dyn Fn(&FollowupFact) -> bool| -> Vec<&FollowupFact> {
        input
            .followups
            .iter()
            .filter(listed)
            .filter(|f| pred(f))
            .collect()
    };
    Report {
        since: p.since,
        until: p.now,
        currency: p.currency.clone(),
        click_window: p.click_window,
        conversion_window: p.conversion_window,
        granularity: ctx.steps.granularity,
        campaigns: p
            .campaigns
            .iter()
            .map(|c| ctx.figures(Some(c.clone()), &select(&|f| &f.campaign == c)))
            .collect(),
        total: ctx.figures(None, &select(&|_| true)),
    }
}

/// Each unsubscribe in the period is blamed on the customer's last follow-up sent at or
/// before it: follow-up id → unsubscribes.
fn blame_unsubscribes(input: &ReportInput, p: &ReportParams) -> HashMap<i64, u64> {
    let mut sent: HashMap<&CustomerId, Vec<(Timestamp, i64)>> = HashMap::new();
    for f in &input.followups {
        if let Some(at) = f.sent_at() {
            sent.entry(&f.customer).or_default().push((at, f.id));
        }
    }
    let mut blamed = HashMap::new();
    for u in &input.unsubscribes {
        if u.at < p.since || u.at >= p.now {
            continue;
        }
        let last = sent
            .get(&u.customer)
            .and_then(|l| l.iter().filter(|(at, _)| *at <= u.at).max());
        if let Some((_, id)) = last {
            *blamed.entry(*id).or_insert(0) += 1;
        }
    }
    blamed
}

/// The series' steps: local days or weeks (from Monday) covering `[from, until)`.
struct Steps {
    tz: chrono_tz::Tz,
    granularity: Granularity,
    starts: Vec<NaiveDate>,
}

impl Steps {
    fn empty(tz: chrono_tz::Tz) -> Steps {
        Steps {
            tz,
            granularity: Granularity::Day,
            starts: vec![],
        }
    }

    fn new(from: Timestamp, until: Timestamp, tz: chrono_tz::Tz) -> Steps {
        let day = |t: Timestamp| t.to_datetime().with_timezone(&tz).date_naive();
        let (first, last) = (day(from), day(Timestamp(until.0 - 1).max(from)));
        let granularity = if (last - first).num_days() < DAILY_UP_TO_DAYS {
            Granularity::Day
        } else {
            Granularity::Week
        };
        let mut s = Steps {
            tz,
            granularity,
            starts: vec![],
        };
        let (mut d, end) = (s.start_of(first), s.start_of(last));
        let step = if granularity == Granularity::Day {
            1
        } else {
            7
        };
        while d <= end {
            s.starts.push(d);
            d = d + chrono::Days::new(step);
        }
        s
    }

    fn start_of(&self, d: NaiveDate) -> NaiveDate {
        match self.granularity {
            Granularity::Day => d,
            Granularity::Week => {
                d - chrono::Days::new(u64::from(d.weekday().num_days_from_monday()))
            }
        }
    }

    fn of(&self, t: Timestamp) -> NaiveDate {
        self.start_of(t.to_datetime().with_timezone(&self.tz).date_naive())
    }
}

struct Ctx<'a> {
    input: &'a ReportInput,
    p: &'a ReportParams,
    attributions: Vec<Attribution>,
    blamed: HashMap<i64, u64>,
    steps: Steps,
}

impl Ctx<'_> {
    fn figures(&self, name: Option<CampaignName>, fs: &[&FollowupFact]) -> Figures {
        let sent: HashMap<i64, &FollowupFact> = fs
            .iter()
            .filter(|f| f.sent_at().is_some())
            .map(|f| (f.id, *f))
            .collect();
        let hits = || {
            self.input
                .clicks
                .iter()
                .filter(|c| sent.contains_key(&c.followup_id))
        };
        let clicks: Vec<_> = hits().filter(|c| c.kind == HitKind::Click).collect();
        let clicked: HashSet<i64> = clicks.iter().map(|c| c.followup_id).collect();
        let earned: Vec<&Attribution> = self
            .attributions
            .iter()
            .filter(|a| sent.contains_key(&a.followup_id))
            .collect();
        let revenue: Money = earned.iter().map(|a| a.revenue).sum();

        let recipients: HashSet<&CustomerId> = sent.values().map(|f| &f.customer).collect();
        let control: HashSet<&CustomerId> = fs
            .iter()
            .filter(|f| f.outcome == Outcome::Holdout && !recipients.contains(&f.customer))
            .map(|f| &f.customer)
            .collect();
        let (r_group, r_totals) = self.group(fs, &recipients, false);
        let (c_group, c_totals) = self.group(fs, &control, true);
        // The difference of the AOVs as shown, so the table adds up; the interval is
        // Welch's around the exact difference (they differ by a cent at most).
        let aov_diff = match (r_group.aov, c_group.aov) {
            (Some(r), Some(c)) => Some(Signed(r.minor() - c.minor())),
            _ => None,
        };
        let as_f = |v: &[i64]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let ci = welch_ci95(&as_f(&r_totals), &as_f(&c_totals))
            .map(|(lo, hi)| [Signed(lo.round() as i64), Signed(hi.round() as i64)]);
        let conversion_diff = (!recipients.is_empty() && !control.is_empty()).then(|| {
            let r = r_totals.len() as f64 / recipients.len() as f64;
            let c = c_totals.len() as f64 / control.len() as f64;
            ((r - c) * 10_000.0).round() / 10_000.0
        });

        Figures {
            name,
            sent: sent.len() as u64,
            clicks: clicks.len() as u64,
            clicked: clicked.len() as u64,
            click_rate: rate(clicked.len() as u64, sent.len() as u64),
            prefetches: hits().filter(|c| c.kind == HitKind::Prefetch).count() as u64,
            unsubscribes: sent.keys().filter_map(|id| self.blamed.get(id)).sum(),
            holdout: control.len() as u64,
            attributed_orders: earned.len() as u64,
            attributed_revenue: revenue,
            recommended_revenue: earned.iter().map(|a| a.recommended_revenue()).sum(),
            revenue_per_recipient: per(revenue, sent.len() as u64),
            recipients: r_group,
            control: c_group,
            uplift: Uplift {
                aov_diff,
                aov_diff_ci95: ci,
                conversion_diff,
            },
            picked_bought: picked_bought(&sent, &clicks, &earned),
            series: self.series(&sent, &earned),
        }
    }

    /// A group's figures and its order totals (cents), from the windows after the due
    /// times of its customers' follow-ups (held-out ones for the control group).
    fn group(
        &self,
        fs: &[&FollowupFact],
        customers: &HashSet<&CustomerId>,
        holdout: bool,
    ) -> (Group, Vec<i64>) {
        let mut windows: HashMap<&CustomerId, Vec<&FollowupFact>> = HashMap::new();
        for f in fs {
            if customers.contains(&f.customer) && (f.outcome == Outcome::Holdout) == holdout {
                windows.entry(&f.customer).or_default().push(f);
            }
        }
        let n = self.p.conversion_window;
        let totals: Vec<i64> = self
            .input
            .orders
            .iter()
            .filter(|o| o.counts() && o.placed_at < self.p.now)
            .filter(|o| {
                windows.get(&o.customer).is_some_and(|ws| {
                    ws.iter().any(|f| {
                        f.order_id != o.id
                            && o.placed_at > f.due_at
                            && o.placed_at <= f.due_at.plus(n)
                    })
                })
            })
            .map(|o| o.total.minor())
            .collect();
        let revenue = Money::from_minor(totals.iter().sum());
        let group = Group {
            customers: customers.len() as u64,
            orders: totals.len() as u64,
            revenue,
            aov: per(revenue, totals.len() as u64),
            conversion: rate(totals.len() as u64, customers.len() as u64),
        };
        (group, totals)
    }

    fn series(&self, sent: &HashMap<i64, &FollowupFact>, earned: &[&Attribution]) -> Vec<Point> {
        let mut by_step: BTreeMap<NaiveDate, (u64, Money)> = self
            .steps
            .starts
            .iter()
            .map(|d| (*d, (0, Money::default())))
            .collect();
        for f in sent.values() {
            if let Some(at) = f.sent_at() {
                by_step.entry(self.steps.of(at)).or_default().0 += 1;
            }
        }
        for a in earned {
            if let Some(at) = sent[&a.followup_id].sent_at() {
                let e = by_step.entry(self.steps.of(at)).or_default();
                e.1 = e.1 + a.revenue;
            }
        }
        by_step
            .into_iter()
            .map(|(start, (n, revenue))| Point {
                start,
                sent: n,
                attributed_revenue: revenue,
                revenue_per_recipient: per(revenue, n),
            })
            .collect()
    }
}

fn picked_bought(
    sent: &HashMap<i64, &FollowupFact>,
    clicks: &[&super::input::ClickFact],
    earned: &[&Attribution],
) -> Vec<PickedBought> {
    let mut by: BTreeMap<&ProductId, PickedBought> = BTreeMap::new();
    for a in earned {
        let mut seen = HashSet::new();
        for i in &a.recommended {
            let e = by.entry(&i.product_id).or_insert_with(|| PickedBought {
                product_id: i.product_id.clone(),
                picked: 0,
                clicks: 0,
                orders: 0,
                quantity: 0,
                revenue: Money::default(),
            });
            if seen.insert(&i.product_id) {
                e.orders += 1;
            }
            e.quantity += u64::from(i.quantity);
            e.revenue = e.revenue + i.unit_price.times(i64::from(i.quantity));
        }
    }
    for f in sent.values() {
        for p in &f.picked {
            if let Some(e) = by.get_mut(p) {
                e.picked += 1;
            }
        }
    }
    for c in clicks {
        if let Some(e) = by.get_mut(&c.product_id) {
            e.clicks += 1;
        }
    }
    let mut out: Vec<PickedBought> = by.into_values().collect();
    out.sort_by(|a, b| {
        b.revenue
            .cmp(&a.revenue)
            .then_with(|| a.product_id.cmp(&b.product_id))
    });
    out
}

fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| v.to_string())
}

/// "12.5%" for 0.125.
pub(crate) fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

/// "+1.20 [-3.40, 5.80]", or what is missing.
pub(crate) fn diff_with_interval(u: &Uplift) -> String {
    match (u.aov_diff, u.aov_diff_ci95) {
        (None, _) => "– (no orders on a side)".to_owned(),
        (Some(d), None) => format!("{} (too few orders for an interval)", signed_plus(d)),
        (Some(d), Some([lo, hi])) => format!("{} [{lo}, {hi}]", signed_plus(d)),
    }
}

fn signed_plus(d: Signed) -> String {
    if d.0 > 0 {
        format!("+{d}")
    } else {
        d.to_string()
    }
}

impl Report {
    /// The table `report` prints.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "Report {} – {} ({}; orders attributed within {} of a click, conversion within {} of the due time)\n\n",
            self.since.rfc3339(),
            self.until.rfc3339(),
            self.currency,
            humane_duration(self.click_window),
            humane_duration(self.conversion_window),
        );
        let rows: Vec<(String, &Figures)> = self
            .campaigns
            .iter()
            .map(|f| {
                (
                    f.name.as_ref().map_or_else(String::new, |n| n.to_string()),
                    f,
                )
            })
            .chain([("total".to_owned(), &self.total)])
            .collect();
        let width = rows
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(5)
            .max(8);
        let _ = writeln!(
            out,
            "{:<width$}  {:>6}  {:>6}  {:>6}  {:>6}  {:>7}  {:>6}  {:>10}  {:>9}  {:>9}  {:>9}  aov diff [95% interval]",
            "campaign",
            "sent",
            "clicks",
            "rate",
            "unsubs",
            "holdout",
            "orders",
            "revenue",
            "per email",
            "aov sent",
            "aov hold"
        );
        for (name, f) in &rows {
            let _ = writeln!(
                out,
                "{name:<width$}  {:>6}  {:>6}  {:>6}  {:>6}  {:>7}  {:>6}  {:>10}  {:>9}  {:>9}  {:>9}  {}",
                f.sent,
                f.clicks,
                percent(f.click_rate),
                f.unsubscribes,
                f.holdout,
                f.attributed_orders,
                f.attributed_revenue.decimal(),
                or_dash(f.revenue_per_recipient),
                or_dash(f.recipients.aov),
                or_dash(f.control.aov),
                diff_with_interval(&f.uplift),
            );
        }
        let bought: Vec<&Figures> = self
            .campaigns
            .iter()
            .filter(|f| !f.picked_bought.is_empty())
            .collect();
        if !bought.is_empty() {
            out.push_str("\nPicked products bought in attributed orders:\n");
        }
        for f in bought {
            let _ = write!(
                out,
                "  {}:",
                f.name.as_ref().map_or("", CampaignName::as_str)
            );
            for b in &f.picked_bought {
                let _ = write!(out, " {} ×{} ({})", b.product_id, b.quantity, b.revenue);
            }
            out.push('\n');
        }
        out
    }

    /// One line for the end of the demo.
    pub fn summary_line(&self) -> String {
        let t = &self.total;
        format!(
            "{} sent, {} clicks ({} of emails clicked), {} attributed orders worth {} {} ({} per email); AOV recipients {} vs holdout {}: {}",
            t.sent,
            t.clicks,
            percent(t.click_rate),
            t.attributed_orders,
            t.attributed_revenue,
            self.currency,
            or_dash(t.revenue_per_recipient),
            or_dash(t.recipients.aov),
            or_dash(t.control.aov),
            diff_with_interval(&t.uplift),
        )
    }
}

#[cfg(test)]
mod tests;
