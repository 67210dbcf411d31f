//! The report as one self-contained HTML page: inline CSS and inline SVG charts, no
//! script, font, image or stylesheet from anywhere, so it can be mailed around or opened
//! from disk. Every name and id on it is escaped.

use super::report::{Figures, Report, diff_with_interval, percent};
use crate::domain::Money;
use std::fmt::Write as _;
use tera::escape_html as esc;

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:64rem;\
margin:2rem auto;padding:0 1rem;color:#1f2328;line-height:1.45}\
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem}\
.muted{color:#59636e}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}\
.card{border:1px solid #d1d9e0;border-radius:6px;padding:.6rem .9rem;min-width:9rem}\
.card b{display:block;font-size:1.3rem}table{border-collapse:collapse;width:100%;font-size:.9rem}\
td{white-space:nowrap}th,td{padding:.3rem .5rem;border-bottom:1px solid #d1d9e0;text-align:right}\
th:first-child,td:first-child{text-align:left}tr.total td{font-weight:600}\
svg{max-width:100%;height:auto;background:#fff}.chart{margin:1rem 0}\
.wide{overflow-x:auto}.read{background:#f6f8fa;border-left:4px solid #0969da;padding:.6rem 1rem}";

const RECIPIENTS: &str = "#0969da";
const CONTROL: &str = "#8c959f";

/// The page for `report`, titled with the store's name.
pub fn render(report: &Report, store_name: &str) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let t = &report.total;
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Did it help? {store}: aftercart report</title><style>{CSS}</style></head><body>\
<h1>Did it help?</h1><p class=\"muted\">{store}, follow-ups due {since} to {until} \
(amounts in {cur}). Orders count for an email within {cw} of a click on it; the groups \
are compared on orders within {nw} of each follow-up's due time.</p>",
        store = esc(store_name),
        since = esc(&report.since.rfc3339()),
        until = esc(&report.until.rfc3339()),
        cur = esc(&report.currency),
        cw = esc(&duration_words(report.click_window)),
        nw = esc(&duration_words(report.conversion_window)),
    );
    out.push_str("<div class=\"cards\">");
    for (label, value) in [
        ("emails sent", t.sent.to_string()),
        ("clicks", t.clicks.to_string()),
        ("emails clicked", percent(t.click_rate)),
        ("attributed revenue", t.attributed_revenue.decimal()),
        ("revenue per email", or_dash(t.revenue_per_recipient)),
        ("AOV difference [95 %]", diff_with_interval(&t.uplift)),
    ] {
        let _ = write!(
            out,
            "<div class=\"card\"><span class=\"muted\">{}</span><b>{}</b></div>",
            esc(label),
            esc(&value)
        );
    }
    out.push_str("</div>");

    out.push_str("<h2>Revenue per email over time</h2>");
    out.push_str(&revenue_chart(report));
    out.push_str("<h2>Average order value: recipients vs holdout</h2>");
    out.push_str(&aov_chart(report));
    out.push_str("<h2>Campaigns</h2>");
    out.push_str(&table(report));
    out.push_str(&picked_table(report));
    out.push_str(&how_to_read(report));
    out.push_str("</body></html>\n");
    out
}

fn or_dash(m: Option<Money>) -> String {
    m.map_or_else(|| "–".to_owned(), Money::decimal)
}

fn duration_words(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s > 0 && s % 86_400 == 0 => plural(s / 86_400, "day"),
        s if s > 0 && s % 3_600 == 0 => plural(s / 3_600, "hour"),
        s => plural(s / 60, "minute"),
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The smallest 1, 2 or 5 × 10^k at or above `v` (cents), so axis labels are round.
fn nice_ceiling(v: i64) -> i64 {
    if v <= 0 {
        return 100;
    }
    let mut step = 1i64;
    loop {
        for m in [1, 2, 5] {
            if m * step >= v {
                return m * step;
            }
        }
        step = step.saturating_mul(10);
    }
}

fn cents(c: i64) -> String {
    Money::from_minor(c.max(0)).decimal()
}

// Plot area of both charts, in SVG units.
const W: f64 = 720.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

fn svg_open(label: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
aria-label=\"{l}\" font-size=\"11\" font-family=\"system-ui, sans-serif\"><title>{l}</title>",
        l = esc(label)
    )
}

/// Y axis with 0, half and the top, and the plot's baseline.
fn y_axis(out: &mut String, top: i64) {
    let plot_h = H - TOP - BOTTOM;
    for (i, v) in [0, top / 2, top].into_iter().enumerate() {
        let y = TOP + plot_h * (1.0 - i as f64 / 2.0);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{W}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#d1d9e0\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            y + 4.0,
            esc(&cents(v))
        );
    }
}

fn y_of(v: i64, top: i64) -> f64 {
    let plot_h = H - TOP - BOTTOM;
    TOP + plot_h * (1.0 - (v.max(0) as f64 / top as f64).min(1.0))
}

fn empty_chart(label: &str, why: &str) -> String {
    format!(
        "<div class=\"chart\">{}<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#59636e\">{}</text></svg></div>",
        svg_open(label),
        W / 2.0,
        H / 2.0,
        esc(why)
    )
}

/// Bars: the total's revenue per email for the follow-ups sent in each day or week.
fn revenue_chart(report: &Report) -> String {
    let label = "Attributed revenue per email sent, by the day or week it was sent";
    let series = &report.total.series;
    if series.iter().all(|p| p.sent == 0) {
        return empty_chart(label, "No emails were sent in this period.");
    }
    let max = series
        .iter()
        .filter_map(|p| p.revenue_per_recipient)
        .map(Money::minor)
        .max()
        .unwrap_or(0);
    let top = nice_ceiling(max);
    let mut out = format!("<div class=\"chart\">{}", svg_open(label));
    y_axis(&mut out, top);
    let plot_w = W - LEFT - 8.0;
    let slot = plot_w / series.len() as f64;
    for (i, p) in series.iter().enumerate() {
        let x = LEFT + slot * i as f64;
        if let Some(rpr) = p.revenue_per_recipient {
            let y = y_of(rpr.minor(), top);
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{RECIPIENTS}\">\
<title>{}: {} per email ({} sent, {} attributed)</title></rect>",
                x + slot * 0.1,
                (slot * 0.8).max(0.5),
                (H - BOTTOM - y).max(0.0),
                esc(&p.start.to_string()),
                esc(&rpr.decimal()),
                p.sent,
                esc(&p.attributed_revenue.decimal()),
            );
        }
    }
    // Dates under the first, middle and last steps.
    let n = series.len();
    let mut marks = vec![0, n / 2, n - 1];
    marks.dedup();
    for i in marks {
        // The first and last labels stay inside the picture.
        let (x, anchor) = match i {
            0 => (LEFT, "start"),
            i if i == n - 1 => (LEFT + slot * n as f64, "end"),
            i => (LEFT + slot * (i as f64 + 0.5), "middle"),
        };
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            H - BOTTOM + 16.0,
            esc(&series[i].start.to_string())
        );
    }
    out.push_str("</svg></div>");
    out
}

/// Grouped bars per campaign and in total: recipients' AOV, the holdout's AOV, and on
/// the recipients' bar the 95 % interval of the difference, drawn from the holdout's
/// level (a whisker that reaches below the dashed line means "no clear difference").
fn aov_chart(report: &Report) -> String {
    let label =
        "Average order value of recipients and holdout, with the 95 % interval of the difference";
    let rows: Vec<(&str, &Figures)> = report
        .campaigns
        .iter()
        .map(|f| (f.name.as_ref().map_or("", |n| n.as_str()), f))
        .chain([("total", &report.total)])
        .collect();
    let whisker = |f: &Figures| match (f.control.aov, f.uplift.aov_diff_ci95) {
        (Some(c), Some([lo, hi])) => Some((c.minor() + lo.0, c.minor() + hi.0)),
        _ => None,
    };
    let max = rows
        .iter()
        .flat_map(|(_, f)| {
            [
                f.recipients.aov.map(Money::minor),
                f.control.aov.map(Money::minor),
                whisker(f).map(|(_, hi)| hi),
            ]
        })
        .flatten()
        .max();
    let Some(max) = max else {
        return empty_chart(label, "No orders in the conversion windows yet.");
    };
    let top = nice_ceiling(max);
    let mut out = format!("<div class=\"chart\">{}", svg_open(label));
    y_axis(&mut out, top);
    let plot_w = W - LEFT - 8.0;
    let slot = plot_w / rows.len() as f64;
    let bar = (slot * 0.3).min(60.0);
    for (i, (name, f)) in rows.iter().enumerate() {
        let mid = LEFT + slot * (i as f64 + 0.5);
        let rx = mid - bar - 2.0;
        let cx = mid + 2.0;
        for (x, aov, fill, who) in [
            (rx, f.recipients.aov, RECIPIENTS, "recipients"),
            (cx, f.control.aov, CONTROL, "holdout"),
        ] {
            if let Some(aov) = aov {
                let y = y_of(aov.minor(), top);
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{fill}\">\
<title>{}: {who} AOV {}</title></rect>",
                    (H - BOTTOM - y).max(0.0),
                    esc(name),
                    esc(&aov.decimal()),
                );
            }
        }
        if let (Some(c), Some((lo, hi))) = (f.control.aov, whisker(f)) {
            let wx = rx + bar / 2.0;
            let (ylo, yhi, yc) = (y_of(lo, top), y_of(hi, top), y_of(c.minor(), top));
            let _ = write!(
                out,
                "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{yc:.1}\" y2=\"{yc:.1}\" stroke=\"#1f2328\" stroke-dasharray=\"4 3\"/>\
<g stroke=\"#1f2328\" stroke-width=\"2\"><title>{}: difference {}</title>\
<line x1=\"{wx:.1}\" x2=\"{wx:.1}\" y1=\"{ylo:.1}\" y2=\"{yhi:.1}\"/>\
<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ylo:.1}\" y2=\"{ylo:.1}\"/>\
<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{yhi:.1}\" y2=\"{yhi:.1}\"/></g>",
                rx - 4.0,
                rx + bar + 4.0,
                esc(name),
                esc(&diff_with_interval(&f.uplift)),
                wx - 6.0,
                wx + 6.0,
                wx - 6.0,
                wx + 6.0,
            );
        }
        let _ = write!(
            out,
            "<text x=\"{mid:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            H - BOTTOM + 16.0,
            esc(name)
        );
    }
    let _ = write!(
        out,
        "<rect x=\"{LEFT}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{RECIPIENTS}\"/>\
<text x=\"{:.1}\" y=\"{:.1}\">recipients</text>\
<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{CONTROL}\"/>\
<text x=\"{:.1}\" y=\"{:.1}\">holdout</text>\
<text x=\"{:.1}\" y=\"{:.1}\">| 95 % interval of the difference, from the holdout's level</text>",
        H - 14.0,
        LEFT + 14.0,
        H - 5.0,
        LEFT + 90.0,
        H - 14.0,
        LEFT + 104.0,
        H - 5.0,
        LEFT + 170.0,
        H - 5.0,
    );
    out.push_str("</svg></div>");
    out
}

fn table(report: &Report) -> String {
    let mut out = String::from(
        "<div class=\"wide\"><table><thead><tr><th>campaign</th><th>sent</th><th>clicks</th><th>emails clicked</th>\
<th>unsubscribes</th><th>holdout</th><th>attributed orders</th><th>attributed revenue</th>\
<th>of it recommended items</th><th>per email</th><th>conversion recipients / holdout</th>\
<th>AOV recipients</th><th>AOV holdout</th><th>AOV difference [95 %]</th></tr></thead><tbody>",
    );
    let rows = report
        .campaigns
        .iter()
        .map(|f| (f.name.as_ref().map_or("", |n| n.as_str()), f, ""))
        .chain([("total", &report.total, " class=\"total\"")]);
    let conv = |c: Option<f64>| c.map_or_else(|| "–".to_owned(), |c| format!("{c:.2}"));
    for (name, f, class) in rows {
        let _ = write!(
            out,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
<td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            f.sent,
            f.clicks,
            esc(&percent(f.click_rate)),
            f.unsubscribes,
            f.holdout,
            f.attributed_orders,
            esc(&f.attributed_revenue.decimal()),
            esc(&f.recommended_revenue.decimal()),
            esc(&or_dash(f.revenue_per_recipient)),
            esc(&conv(f.recipients.conversion)),
            esc(&conv(f.control.conversion)),
            esc(&or_dash(f.recipients.aov)),
            esc(&or_dash(f.control.aov)),
            esc(&diff_with_interval(&f.uplift)),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

fn picked_table(report: &Report) -> String {
    let rows: Vec<(&str, &super::report::PickedBought)> = report
        .campaigns
        .iter()
        .flat_map(|f| {
            let name = f.name.as_ref().map_or("", |n| n.as_str());
            f.picked_bought.iter().map(move |b| (name, b))
        })
        .collect();
    if rows.is_empty() {
        return "<h2>Recommended products bought</h2><p class=\"muted\">No attributed order \
contained a recommended product in this period.</p>"
            .to_owned();
    }
    let mut out = String::from(
        "<h2>Recommended products bought</h2><table><thead><tr><th>campaign</th><th>product</th>\
<th>emails showing it</th><th>clicks</th><th>orders</th><th>quantity</th><th>revenue</th>\
</tr></thead><tbody>",
    );
    for (name, b) in rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            esc(b.product_id.as_str()),
            b.picked,
            b.clicks,
            b.orders,
            b.quantity,
            esc(&b.revenue.decimal()),
        );
    }
    out.push_str("</tbody></table>");
    out
}

fn how_to_read(report: &Report) -> String {
    let t = &report.total;
    format!(
        "<h2>How to read this</h2><div class=\"read\">\
<p><b>Attributed revenue</b> counts every order placed within {cw} after a click on an \
email, credited to the last email clicked. Some of those shoppers would have bought \
anyway, so it is an upper bound on what the emails earned, not proof that they caused it.</p>\
<p><b>The holdout</b> is a random share of customers that got no email. Comparing the \
orders of recipients and holdout in the {nw} after each follow-up fell due, clicked or \
not, is the fair test: the groups differ only in the email. Recipients: {rc} customers, \
{ro} orders; holdout: {hc} customers, {ho} orders.</p>\
<p><b>The 95 % interval</b> of the AOV difference is the range of differences this data \
is consistent with (Welch's t interval, each order one observation). If it includes 0, \
the data do not show that the emails changed order values; a wide interval means too \
few orders to tell yet. Small samples swing a lot: wait for a few hundred orders on \
each side before drawing conclusions, and do not stop a test the day it looks good. \
With fewer than two orders on a side no interval is shown.</p>\
<p>Follow-ups from the last {nw} are still inside their window, for both groups alike. \
Link fetches by mail scanners (a HEAD request or a fetch within 2 seconds of \
delivery; {pf} in this period) and repeated clicks within a minute are not counted as \
clicks. There is no \
open tracking unless it is switched on.</p></div>",
        cw = esc(&duration_words(report.click_window)),
        nw = esc(&duration_words(report.conversion_window)),
        rc = t.recipients.customers,
        ro = t.recipients.orders,
        hc = t.control.customers,
        ho = t.control.orders,
        pf = t.prefetches,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CampaignName, ProductId};
    use crate::measure::attribution::tests::{click, held, order, sent, t};
    use crate::measure::input::ReportInput;
    use crate::measure::report::{DEFAULT_CONVERSION_WINDOW, ReportParams, build};

    const EVIL: &str = "<img src=x onerror=alert(1)>&\"'";

    fn report(campaigns: &[&str], input: &ReportInput) -> Report {
        build(
            input,
            &ReportParams {
                campaigns: campaigns
                    .iter()
                    .map(|c| CampaignName::parse(c).unwrap())
                    .collect(),
                since: t(0.0),
                now: t(30.0),
                click_window: std::time::Duration::from_secs(5 * 86_400),
                conversion_window: DEFAULT_CONVERSION_WINDOW,
                timezone: chrono_tz::UTC,
                currency: "USD".into(),
            },
        )
    }

    fn input(campaign: &str, product: &str) -> ReportInput {
        ReportInput {
            followups: vec![
                sent(1, "C1", campaign, 1.0, &[product]),
                sent(2, "C2", campaign, 2.0, &[product]),
                held(3, "C3", campaign, 1.0),
                held(4, "C4", campaign, 1.0),
            ],
            clicks: vec![click(1, product, 1.5)],
            orders: vec![
                order("O1", "C1", 2.0, &[(product, 1, 2500)], 500),
                order("O2", "C2", 3.0, &[("P9", 1, 4000)], 0),
                order("O3", "C3", 4.0, &[("P9", 1, 2000)], 0),
                order("O4", "C4", 5.0, &[("P9", 1, 2600)], 0),
            ],
            unsubscribes: vec![],
        }
    }

    /// Every `<svg>…</svg>` of the page, checked to be well-formed XML as far as tags go:
    /// each opened element is closed in order, attributes are quoted, no NaN or infinity.
    fn svgs(page: &str) -> Vec<&str> {
        let mut out = vec![];
        let mut rest = page;
        while let Some(start) = rest.find("<svg") {
            let end = rest[start..].find("</svg>").expect("closed svg") + start + 6;
            out.push(&rest[start..end]);
            rest = &rest[end..];
        }
        for svg in &out {
            let mut stack: Vec<&str> = vec![];
            let mut s = *svg;
            while let Some(i) = s.find('<') {
                let j = s[i..].find('>').expect("tag ends") + i;
                let tag = &s[i + 1..j];
                assert!(!tag.contains('<'), "{tag}");
                if let Some(name) = tag.strip_prefix('/') {
                    assert_eq!(stack.pop(), Some(name), "in {svg}");
                } else if !tag.ends_with('/') {
                    stack.push(tag.split_whitespace().next().unwrap());
                }
                // Every attribute value is quoted.
                for part in tag.split_whitespace().skip(1) {
                    if let Some((_, v)) = part.split_once('=') {
                        assert!(v.starts_with('"'), "unquoted {part} in {tag}");
                    }
                }
                s = &s[j + 1..];
            }
            assert!(stack.is_empty(), "{stack:?}");
            assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
            assert!(svg.contains("viewBox=\"0 0 720 260\""));
            for bad in ["NaN", "inf", "undefined"] {
                assert!(!svg.contains(bad), "{bad} in {svg}");
            }
        }
        out
    }

    #[test]
    fn the_page_is_self_contained_with_two_charts_and_the_figures() {
        let r = report(&["upgrade"], &input("upgrade", "P1"));
        let page = render(&r, "Northwind");
        let charts = svgs(&page);
        assert_eq!(charts.len(), 2);
        // Revenue per email: day 1 (O1, 30.00 on one email) and day 2 (0.00 on one).
        assert!(
            charts[0]
                .contains("<title>2025-06-03: 30.00 per email (1 sent, 30.00 attributed)</title>"),
            "{}",
            charts[0]
        );
        assert_eq!(charts[0].matches("<rect").count(), 2);
        // AOV: recipients (30 + 40) / 2 = 35.00, holdout (20 + 26) / 2 = 23.00, an
        // interval on two orders a side, and the whisker's three lines.
        assert!(charts[1].contains("recipients AOV 35.00"), "{}", charts[1]);
        assert!(charts[1].contains("holdout AOV 23.00"));
        assert!(charts[1].contains("<title>upgrade: difference +12.00 ["));
        assert!(charts[1].contains("stroke-dasharray"));
        for external in ["<script", "<link", "src=", "@import", "url(", "<img"] {
            assert!(!page.contains(external), "{external}");
        }
        assert!(page.starts_with("<!doctype html>") && page.trim_end().ends_with("</html>"));
        assert!(page.contains("<h2>How to read this</h2>"));
        assert!(page.contains("within 5 days after a click"));
        assert!(
            page.contains("<td>P1</td>"),
            "the picked product that was bought"
        );
    }

    #[test]
    fn names_and_ids_are_escaped() {
        let evil_campaign = "x<script>alert(1)</script>";
        let r = report(&[evil_campaign], &input(evil_campaign, EVIL));
        assert_eq!(
            r.campaigns[0].picked_bought[0].product_id,
            ProductId::parse(EVIL).unwrap()
        );
        let page = render(&r, "Bob & \"Sons\" <Shop>");
        assert!(!page.contains("<script"), "campaign name");
        assert!(!page.contains("<img"), "product id");
        assert!(
            page.contains("&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#x27;"),
            "{page}"
        );
        assert!(page.contains("Bob &amp; &quot;Sons&quot; &lt;Shop&gt;"));
        svgs(&page);
    }

    #[test]
    fn an_empty_period_says_so_instead_of_drawing_nothing() {
        let r = report(&["upgrade"], &ReportInput::default());
        let page = render(&r, "Northwind");
        let charts = svgs(&page);
        assert_eq!(charts.len(), 2);
        assert!(charts[0].contains("No emails were sent in this period."));
        assert!(charts[1].contains("No orders in the conversion windows yet."));
        assert!(page.contains("No attributed order contained a recommended product"));
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0), 100);
        assert_eq!(nice_ceiling(3000), 5000);
        assert_eq!(nice_ceiling(3875), 5000);
        assert_eq!(nice_ceiling(1000), 1000);
        assert_eq!(nice_ceiling(1001), 2000);
        assert_eq!(nice_ceiling(i64::MAX), i64::MAX, "no overflow");
    }
}
