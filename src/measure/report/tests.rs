//! A crafted store where every figure is worked out by hand (in the comments, then in
//! the assertions). Days count from T0 = Monday 2025-06-02 00:00 UTC; period: days 0–30.

use super::*;
use crate::domain::OrderStatus;
use crate::measure::attribution::tests::{DAY, T0, click, held, order, sent, t};
use crate::measure::input::{OrderFact, UnsubscribeFact};
use crate::measure::stats::t_quantile;

const A: &str = "complete_your_setup";
const B: &str = "upgrade";

fn name(s: &str) -> CampaignName {
    CampaignName::parse(s).unwrap()
}

fn params(campaigns: &[&str]) -> ReportParams {
    ReportParams {
        campaigns: campaigns.iter().map(|c| name(c)).collect(),
        since: t(0.0),
        now: t(30.0),
        click_window: Duration::from_secs(5 * 86_400),
        conversion_window: DEFAULT_CONVERSION_WINDOW,
        timezone: chrono_tz::UTC,
        currency: "USD".into(),
    }
}

fn cid(s: &str) -> CustomerId {
    CustomerId::parse(s).unwrap()
}

fn m(cents: i64) -> Money {
    Money::from_minor(cents)
}

/// The store:
/// - A sent F1 (C1, day 1, picks P1 P2), F2 (C2, day 2, P3), F3 (C3, day 2, P1); held
///   F4 (C4, day 1), F5 (C5, day 3), F6 (C6, day 4). Outside the period: F9 (C8, day −3).
/// - B sent F7 (C1, day 5, P5); held F8 (C7, day 5).
/// - `enhance` (not reported) sent F10 (C2, day 6).
fn store() -> ReportInput {
    let mut prefetch = click(1, "P1", 1.0);
    prefetch.at = Timestamp(t(1.0).0 + 1_000);
    prefetch.kind = HitKind::Prefetch;
    let mut duplicate = click(1, "P1", 1.1);
    duplicate.at = Timestamp(duplicate.at.0 + 30_000);
    duplicate.kind = HitKind::Duplicate;
    let cancelled = OrderFact {
        status: OrderStatus::Cancelled,
        ..order("O8", "C1", 4.5, &[("P1", 1, 4000)], 0)
    };
    ReportInput {
        followups: vec![
            sent(1, "C1", A, 1.0, &["P1", "P2"]),
            sent(2, "C2", A, 2.0, &["P3"]),
            sent(3, "C3", A, 2.0, &["P1"]),
            held(4, "C4", A, 1.0),
            held(5, "C5", A, 3.0),
            held(6, "C6", A, 4.0),
            sent(7, "C1", B, 5.0, &["P5"]),
            held(8, "C7", B, 5.0),
            sent(9, "C8", A, -3.0, &["P1"]),
            sent(10, "C2", "enhance", 6.0, &["P3"]),
        ],
        clicks: vec![
            prefetch,
            click(1, "P1", 1.1),
            duplicate,
            click(1, "P2", 3.0),
            click(2, "P3", 3.0),
            click(7, "P5", 5.5),
            click(9, "P1", -1.0),
            click(10, "P3", 6.5),
        ],
        orders: vec![
            // C1: last click before day 4 is F1's (day 3) → F1; P2 was picked: 20.00.
            order("O1", "C1", 4.0, &[("P2", 1, 2000), ("P9", 1, 1000)], 0),
            // C1: last click before day 6 is F7's (day 5.5) → F7; P5 ×2 picked: 30.00.
            order("O2", "C1", 6.0, &[("P5", 2, 1500)], 500),
            // C2: F2 was clicked on day 3, but F10 (enhance) on day 6.5 is the last click.
            order("O3", "C2", 7.0, &[("P3", 1, 4000)], 0),
            // C3: no click.
            order("O4", "C3", 10.0, &[("P7", 1, 5000)], 0),
            // Held out: C4 (day 5), C5 (day 8) in their windows; C6's is after day 4 + 14.
            order("O5", "C4", 5.0, &[("P7", 1, 2000)], 0),
            order("O6", "C5", 8.0, &[("P7", 1, 3000)], 0),
            order("O7", "C6", 20.0, &[("P7", 1, 2500)], 0),
            cancelled,
            order("O9", "C7", 6.0, &[("P7", 1, 1200)], 0),
            // C2 before F2's due time: in no window.
            order("O10", "C2", 1.0, &[("P7", 1, 9900)], 0),
            // C8 (F9, outside the period) bought after clicking: attributed to F9, in no row.
            order("O11", "C8", 1.0, &[("P1", 1, 7000)], 0),
        ],
        unsubscribes: vec![
            // Blamed on F3 (A), the last email C3 got.
            UnsubscribeFact {
                customer: cid("C3"),
                at: t(12.0),
            },
            // C4 was held out and got no email: blamed on nothing.
            UnsubscribeFact {
                customer: cid("C4"),
                at: t(9.0),
            },
            // C8's last email (F9) is outside the period.
            UnsubscribeFact {
                customer: cid("C8"),
                at: t(2.0),
            },
            // After the period.
            UnsubscribeFact {
                customer: cid("C1"),
                at: t(40.0),
            },
        ],
    }
}

/// Welch's interval worked out step by step on amounts in dollars, with the t quantile
/// (checked against printed tables in `stats`) as the only outside ingredient.
fn welch_by_hand(a: &[f64], b: &[f64]) -> (f64, f64) {
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let var = |x: &[f64]| {
        let mu = mean(x);
        x.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / (x.len() - 1) as f64
    };
    let (qa, qb) = (var(a) / a.len() as f64, var(b) / b.len() as f64);
    let df = (qa + qb).powi(2) / (qa * qa / (a.len() - 1) as f64 + qb * qb / (b.len() - 1) as f64);
    let half = t_quantile(0.975, df) * (qa + qb).sqrt();
    let d = mean(a) - mean(b);
    (d - half, d + half)
}

fn cents(dollars: f64) -> Signed {
    Signed((dollars * 100.0).round() as i64)
}

#[test]
fn every_figure_of_a_campaign_by_hand() {
    let r = build(&store(), &params(&[A, B]));
    let a = &r.campaigns[0];
    assert_eq!(a.name, Some(name(A)));
    // F1, F2, F3 (F9 is before the period).
    assert_eq!(a.sent, 3);
    // F1: P1 at day 1.1 and P2 at day 3; F2: P3. The prefetch and the duplicate do not count.
    assert_eq!((a.clicks, a.clicked, a.prefetches), (3, 2, 1));
    assert_eq!(a.click_rate, Some(0.6667), "2 of 3 emails clicked");
    assert_eq!(a.unsubscribes, 1, "C3");
    assert_eq!(a.holdout, 3, "C4, C5, C6");
    // O1 only: 30.00, of which P2 (20.00) was picked; 30.00 / 3 emails = 10.00.
    assert_eq!(a.attributed_orders, 1);
    assert_eq!(a.attributed_revenue, m(3000));
    assert_eq!(a.recommended_revenue, m(2000));
    assert_eq!(a.revenue_per_recipient, Some(m(1000)));
    // Recipients C1, C2, C3: O1 30 and O2 35 (C1, days 4 and 6 in (1, 15]), O3 40 (C2),
    // O4 50 (C3); O8 is cancelled and O10 before F2's due time. 155 / 4 = 38.75; 4 / 3.
    assert_eq!(
        a.recipients,
        Group {
            customers: 3,
            orders: 4,
            revenue: m(15500),
            aov: Some(m(3875)),
            conversion: Some(1.3333),
        }
    );
    // Control C4, C5, C6: O5 20 and O6 30; O7 (day 20) is past C6's window (4, 18].
    assert_eq!(
        a.control,
        Group {
            customers: 3,
            orders: 2,
            revenue: m(5000),
            aov: Some(m(2500)),
            conversion: Some(0.6667),
        }
    );
    // 38.75 − 25.00; Welch on (30, 35, 40, 50) vs (20, 30): variances 218.75/3 and 50,
    // se² = 72.917/4 + 50/2 = 43.229, df = 43.229² / (18.229²/3 + 25²/1) = 2.54.
    let (lo, hi) = welch_by_hand(&[30.0, 35.0, 40.0, 50.0], &[20.0, 30.0]);
    assert_eq!(
        a.uplift,
        Uplift {
            aov_diff: Some(Signed(1375)),
            aov_diff_ci95: Some([cents(lo), cents(hi)]),
            conversion_diff: Some(0.6667),
        }
    );
    // With df = 2.540, t(0.975) = 3.535 (between the tables' 4.303 for 2 and 3.182 for
    // 3) and se = 6.575: 13.75 ± 23.24.
    assert_eq!((cents(lo), cents(hi)), (Signed(-949), Signed(3699)));
    assert_eq!(
        a.picked_bought,
        [PickedBought {
            product_id: ProductId::parse("P2").unwrap(),
            picked: 1,
            clicks: 1,
            orders: 1,
            quantity: 1,
            revenue: m(2000),
        }]
    );
    // Daily steps from the first send (day 1, 06-03) to the period's last day (07-01).
    assert_eq!(r.granularity, Granularity::Day);
    assert_eq!(a.series.len(), 29);
    let day = |d: u32| NaiveDate::from_ymd_opt(2025, 6, d).unwrap();
    assert_eq!(
        a.series[..3],
        [
            Point {
                start: day(3),
                sent: 1,
                attributed_revenue: m(3000),
                revenue_per_recipient: Some(m(3000))
            },
            Point {
                start: day(4),
                sent: 2,
                attributed_revenue: m(0),
                revenue_per_recipient: Some(m(0))
            },
            Point {
                start: day(5),
                sent: 0,
                attributed_revenue: m(0),
                revenue_per_recipient: None
            },
        ]
    );
    assert_eq!(
        a.series.last().unwrap().start,
        NaiveDate::from_ymd_opt(2025, 7, 1).unwrap()
    );
}

#[test]
fn a_small_campaign_has_no_interval_and_the_total_adds_up() {
    let r = build(&store(), &params(&[A, B]));
    let b = &r.campaigns[1];
    // F7: clicked; O2 (35.00, P5 ×2 = 30.00 picked). Recipient C1: O2 in (5, 19], O1 is
    // before. Control C7: O9 12.00. One order a side: a difference but no interval.
    assert_eq!(
        (b.sent, b.clicks, b.clicked, b.click_rate),
        (1, 1, 1, Some(1.0))
    );
    assert_eq!((b.unsubscribes, b.holdout, b.attributed_orders), (0, 1, 1));
    assert_eq!(
        (b.attributed_revenue, b.recommended_revenue),
        (m(3500), m(3000))
    );
    assert_eq!(b.revenue_per_recipient, Some(m(3500)));
    assert_eq!((b.recipients.orders, b.recipients.aov), (1, Some(m(3500))));
    assert_eq!((b.control.orders, b.control.aov), (1, Some(m(1200))));
    assert_eq!(
        b.uplift,
        Uplift {
            aov_diff: Some(Signed(2300)),
            aov_diff_ci95: None,
            conversion_diff: Some(0.0)
        }
    );

    let total = &r.total;
    assert_eq!(total.name, None);
    // F1, F2, F3, F7; clicks 3 + 1 on 3 emails; O1 + O2 = 65.00 over 4 emails = 16.25.
    assert_eq!(
        (total.sent, total.clicks, total.clicked, total.prefetches),
        (4, 4, 3, 1)
    );
    assert_eq!(total.click_rate, Some(0.75));
    assert_eq!(
        (total.unsubscribes, total.holdout, total.attributed_orders),
        (1, 4, 2)
    );
    assert_eq!(total.attributed_revenue, m(6500));
    assert_eq!(total.recommended_revenue, m(5000));
    assert_eq!(total.revenue_per_recipient, Some(m(1625)));
    // Recipients C1, C2, C3: the same four orders (O2 is in both of C1's windows, once).
    assert_eq!(
        total.recipients,
        Group {
            customers: 3,
            orders: 4,
            revenue: m(15500),
            aov: Some(m(3875)),
            conversion: Some(1.3333)
        }
    );
    // Control C4, C5, C6, C7: 20 + 30 + 12 = 62 / 3 = 20.666… → 20.67; 3 orders / 4.
    assert_eq!(
        total.control,
        Group {
            customers: 4,
            orders: 3,
            revenue: m(6200),
            aov: Some(m(2067)),
            conversion: Some(0.75)
        }
    );
    let (lo, hi) = welch_by_hand(&[30.0, 35.0, 40.0, 50.0], &[20.0, 30.0, 12.0]);
    // 38.75 − 20.67 = 18.08; 4/3 − 3/4 = 0.58333.
    assert_eq!(
        total.uplift,
        Uplift {
            aov_diff: Some(Signed(1808)),
            aov_diff_ci95: Some([cents(lo), cents(hi)]),
            conversion_diff: Some(0.5833),
        }
    );
    // Control (20, 30, 12): variance 162.667/2 = 81.333, se² = 18.229 + 27.111 = 45.340,
    // df = 45.340² / (18.229²/3 + 27.111²/2) = 4.30, t(0.975) = 2.702, se = 6.734:
    // 18.195 either side of the exact difference 18.0833.
    assert_eq!((cents(lo), cents(hi)), (Signed(-11), Signed(3628)));
    let bought: Vec<(&str, u64, Money)> = total
        .picked_bought
        .iter()
        .map(|p| (p.product_id.as_str(), p.quantity, p.revenue))
        .collect();
    assert_eq!(bought, [("P5", 2, m(3000)), ("P2", 1, m(2000))]);
    // Day 5 (06-07): F7 and its 35.00; the total adds A's days.
    let june7 = total
        .series
        .iter()
        .find(|p| p.start == NaiveDate::from_ymd_opt(2025, 6, 7).unwrap())
        .unwrap();
    assert_eq!((june7.sent, june7.attributed_revenue), (1, m(3500)));
    assert_eq!(total.series.iter().map(|p| p.sent).sum::<u64>(), 4);
}

#[test]
fn one_campaign_alone_keeps_its_attribution() {
    // Only B: its figures are the same as in the full report, and the total is B's.
    let full = build(&store(), &params(&[A, B]));
    let only = build(&store(), &params(&[B]));
    assert_eq!(only.campaigns.len(), 1);
    let (b, t) = (&only.campaigns[0], &only.total);
    assert_eq!(b.attributed_revenue, full.campaigns[1].attributed_revenue);
    assert_eq!((t.sent, t.attributed_revenue, t.holdout), (1, m(3500), 1));
    assert_eq!(t.uplift, full.campaigns[1].uplift);
    // O3 stays with the unreported enhance campaign, not with A's F2.
    let a = build(&store(), &params(&[A]));
    assert_eq!(a.total.attributed_orders, 1);
}

#[test]
fn json_has_the_spec_shape_with_money_as_decimal_strings() {
    let v = serde_json::to_value(build(&store(), &params(&[A, B]))).unwrap();
    let a = &v["campaigns"][0];
    for key in [
        "name",
        "sent",
        "clicks",
        "holdout",
        "attributed_orders",
        "attributed_revenue",
        "revenue_per_recipient",
        "recipients",
        "control",
        "uplift",
    ] {
        assert!(a.get(key).is_some(), "campaigns[0].{key}");
        if key != "name" {
            assert!(v["total"].get(key).is_some(), "total.{key}");
        }
    }
    for group in ["recipients", "control"] {
        for key in ["customers", "orders", "aov", "conversion"] {
            assert!(a[group].get(key).is_some(), "{group}.{key}");
        }
    }
    assert_eq!(a["name"], "complete_your_setup");
    assert_eq!(a["sent"], 3);
    assert_eq!(a["attributed_revenue"], "30.00");
    assert_eq!(a["revenue_per_recipient"], "10.00");
    assert_eq!(a["recipients"]["aov"], "38.75");
    assert_eq!(a["recipients"]["conversion"], 1.3333);
    assert_eq!(a["uplift"]["aov_diff"], "13.75");
    let ci = a["uplift"]["aov_diff_ci95"].as_array().unwrap();
    assert_eq!(ci.len(), 2);
    assert!(
        ci[0].as_str().unwrap().starts_with('-') && ci[1].is_string(),
        "{ci:?}"
    );
    assert_eq!(
        v["campaigns"][1]["uplift"]["aov_diff_ci95"],
        serde_json::Value::Null
    );
    assert!(v["total"].get("name").is_none());
    assert_eq!(v["total"]["control"]["aov"], "20.67");
    assert_eq!(v["click_window"], "5d");
    assert_eq!(v["conversion_window"], "14d");
    assert_eq!(v["since"], "2025-06-02T00:00:00Z");
    assert_eq!(a["series"][0]["start"], "2025-06-03");
    assert_eq!(a["picked_bought"][0]["product_id"], "P2");
}

#[test]
fn an_empty_store_gives_zeros_and_nulls_not_made_up_figures() {
    let r = build(&ReportInput::default(), &params(&[A]));
    let a = &r.campaigns[0];
    assert_eq!(
        (a.sent, a.clicks, a.attributed_orders, a.holdout),
        (0, 0, 0, 0)
    );
    assert_eq!(
        (a.click_rate, a.revenue_per_recipient, a.recipients.aov),
        (None, None, None)
    );
    assert_eq!(a.recipients.conversion, None);
    assert_eq!(
        a.uplift,
        Uplift {
            aov_diff: None,
            aov_diff_ci95: None,
            conversion_diff: None
        }
    );
    assert!(a.series.is_empty());
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["total"]["attributed_revenue"], "0.00");
    assert_eq!(v["total"]["uplift"]["aov_diff"], serde_json::Value::Null);
    assert!(r.to_text().contains("total"));
}

#[test]
fn negative_differences_are_written_with_one_sign() {
    assert_eq!(Signed(-150).to_string(), "-1.50");
    assert_eq!(Signed(-5).to_string(), "-0.05");
    assert_eq!(Signed(0).to_string(), "0.00");
    assert_eq!(Signed(123_456).to_string(), "1234.56");
    assert_eq!(serde_json::to_value(Signed(-150)).unwrap(), "-1.50");
    // Half away from zero.
    assert_eq!(div_round(5, 2), 3);
    assert_eq!(div_round(-5, 2), -3);
    assert_eq!(div_round(62_00, 3), 2067);
    assert_eq!(div_round(1, 3), 0);
}

#[test]
fn long_periods_step_by_week_from_monday_in_the_store_time_zone() {
    let mut p = params(&[A]);
    p.now = t(120.0);
    // Sent Sunday 2025-06-08 at 23:30 UTC; in New York that is still Sunday (19:30),
    // in Tokyo it is Monday 06-09 08:30.
    let mut f = sent(1, "C1", A, 0.0, &[]);
    f.due_at = Timestamp(T0 + 6 * DAY + 23 * 3_600_000 + 1_800_000);
    f.outcome = Outcome::Sent { at: f.due_at };
    let input = ReportInput {
        followups: vec![f],
        ..Default::default()
    };
    let mut week = |tz| {
        p.timezone = tz;
        let r = build(&input, &p);
        assert_eq!(r.granularity, Granularity::Week);
        let s = &r.campaigns[0].series;
        assert!(
            s.iter()
                .all(|pt| pt.start.weekday() == chrono::Weekday::Mon)
        );
        s.iter().find(|pt| pt.sent == 1).unwrap().start
    };
    assert_eq!(
        week(chrono_tz::America::New_York),
        NaiveDate::from_ymd_opt(2025, 6, 2).unwrap()
    );
    assert_eq!(
        week(chrono_tz::Asia::Tokyo),
        NaiveDate::from_ymd_opt(2025, 6, 9).unwrap()
    );
}

#[test]
fn the_text_table_and_the_summary_line_show_the_figures() {
    let r = build(&store(), &params(&[A, B]));
    let text = r.to_text();
    let row = text
        .lines()
        .find(|l| l.starts_with("complete_your_setup"))
        .unwrap();
    for want in ["3", "66.7%", "30.00", "10.00", "38.75", "25.00", "+13.75 ["] {
        assert!(row.contains(want), "{want}: {row}");
    }
    let b = text.lines().find(|l| l.starts_with("upgrade")).unwrap();
    assert!(b.contains("+23.00 (too few orders for an interval)"), "{b}");
    assert!(text.lines().any(|l| l.starts_with("total")), "{text}");
    assert!(text.contains("P5 ×2 (30.00)"), "{text}");
    let line = r.summary_line();
    assert!(line.starts_with("4 sent, 4 clicks (75.0% of emails clicked), 2 attributed orders worth 65.00 USD (16.25 per email)"), "{line}");
}
