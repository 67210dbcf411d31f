//! One function per command.

use super::{
    CampaignCommand, Cli, CliError, Command, FollowupsCommand, Io, ModelCommand, SuppressCommand,
    TemplatesCommand,
};
use crate::app::{load_settings, open_engine, open_store};
use crate::config::Settings;
use crate::domain::{EmailAddress, ProductId, Timestamp, parse_duration, parse_rfc3339};
use crate::import::{Kind, import_reader};
use crate::jobs::{Clock, RunOptions, TriggerError, schedule_rules};
use crate::store::FollowupState;
use std::io::{BufRead, BufReader, IsTerminal};

pub async fn dispatch(cli: Cli, io: &mut Io<'_>) -> Result<(), CliError> {
    let cfg = cli.config.as_deref();
    if let Command::Demo = cli.command {
        return super::demo::run(load_settings(cfg, true)?, io).await;
    }
    if let Command::Bench(args) = cli.command {
        return super::bench::run(load_settings(cfg, true)?, args, io).await;
    }
    // Needs no config: it describes the command line, not an installation.
    if let Command::Completions { shell } = cli.command {
        return super::packaging::completions(shell, io);
    }
    let s = load_settings(cfg, false)?;
    match cli.command {
        Command::Migrate => {
            let store = open_store(&s).await?;
            writeln!(io.out, "schema is up to date ({})", store.engine())?;
            Ok(())
        }
        Command::Import { kind, file } => import(&s, &kind, &file, io).await,
        Command::Worker => {
            // Installed first, so SIGTERM during start-up is a graceful stop.
            let stop = crate::app::shutdown_signal();
            let store = open_store(&s).await?;
            let worker =
                crate::app::open_worker(s, store, Clock::System, RunOptions::new(false)).await?;
            let summary = worker.run(stop).await?;
            writeln!(
                io.out,
                "worker stopped: {} sent, {} skipped, {} failed, {} retried",
                summary.sent, summary.skipped, summary.failed, summary.retried
            )?;
            Ok(())
        }
        Command::Serve { no_worker } => Ok(crate::app::serve(s, !no_worker).await?),
        Command::Recommend {
            order,
            campaign,
            json,
        } => recommend(s, &order, campaign.as_deref(), json, io).await,
        Command::Preview {
            campaign,
            order,
            out,
        } => preview(s, &campaign, &order, out.as_deref(), io).await,
        Command::Templates {
            command: TemplatesCommand::Check,
        } => {
            let problems = crate::render::check(&s.templates_dir, &s.campaign_templates());
            for p in &problems {
                writeln!(io.err, "{p}")?;
            }
            if problems.is_empty() {
                writeln!(
                    io.out,
                    "templates OK: {} campaign(s) rendered with sample data",
                    s.campaigns.len()
                )?;
                Ok(())
            } else {
                Err(CliError::BadInput(format!(
                    "{} template problem(s)",
                    problems.len()
                )))
            }
        }
        Command::Campaign { command } => campaign(s, command, io).await,
        Command::Status { json } => status(&s, json, io).await,
        Command::Report {
            campaign,
            since,
            json,
            html,
        } => report(&s, campaign.as_deref(), &since, json, html.as_deref(), io).await,
        Command::Forget { who, json } => super::privacy::forget(&s, &who, json, io).await,
        Command::ExportCustomer { who } => super::privacy::export(&s, &who, io).await,
        Command::Followups(args) => {
            let store = open_store(&s).await?;
            if let Some(FollowupsCommand::Retry { order, state }) = args.command {
                if order.is_none() && state.as_deref() != Some("failed") {
                    return Err(CliError::Usage(
                        "followups retry needs --order ID or --state failed".into(),
                    ));
                }
                if let Some(st) = state.as_deref().filter(|s| *s != "failed") {
                    return Err(CliError::Usage(format!(
                        "only failed follow-ups can be retried, not {st:?}"
                    )));
                }
                let n = store
                    .retry_failed(order.as_deref(), Timestamp::now())
                    .await?;
                writeln!(io.out, "{n} failed follow-up(s) re-queued")?;
                return Ok(());
            }
            let state = args
                .state
                .as_deref()
                .map(FollowupState::parse)
                .transpose()
                .map_err(CliError::Usage)?;
            let rows = store
                .followups(args.order.as_deref(), state, args.limit)
                .await?;
            if args.json {
                let arr: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "order_id": r.order_id, "campaign": r.campaign, "state": r.state, "reason": r.reason,
                            "due_at": r.due_at, "sent_at": r.sent_at, "message_id": r.message_id,
                            "smtp_reply": r.smtp_reply, "attempts": r.attempts, "customer_id": r.customer_id,
                            "items": r.items, "next_at": r.next_at, "held": r.held,
                        })
                    })
                    .collect();
                writeln!(io.out, "{}", serde_json::Value::from(arr))?;
            } else {
                writeln!(
                    io.out,
                    "{:<14} {:<22} {:<9} {:<22} {:<20} {:>3} message-id / reply",
                    "order", "campaign", "state", "reason", "due", "try"
                )?;
                for r in rows {
                    writeln!(
                        io.out,
                        "{:<14} {:<22} {:<9} {:<22} {:<20} {:>3} {} {}",
                        r.order_id,
                        r.campaign,
                        r.state,
                        r.reason.as_deref().unwrap_or("-"),
                        r.due_at.rfc3339(),
                        r.attempts,
                        r.message_id.as_deref().unwrap_or("-"),
                        r.smtp_reply.as_deref().unwrap_or("")
                    )?;
                }
            }
            Ok(())
        }
        Command::Evaluate {
            orders,
            split_at,
            splits,
            k,
            campaign,
            json,
        } => {
            evaluate(
                &s,
                &orders,
                Windows {
                    split_at: split_at.as_deref(),
                    splits: splits.as_deref(),
                },
                k,
                campaign.as_deref(),
                json,
                io,
            )
            .await
        }
        Command::Suppress { command } => {
            let store = open_store(&s).await?;
            match command {
                SuppressCommand::Add { email, reason } => {
                    let e = EmailAddress::parse(&email)
                        .map_err(|why| CliError::BadInput(format!("email: {why}")))?;
                    store
                        .suppress(e.as_str(), &reason, Timestamp::now())
                        .await?;
                    writeln!(io.out, "suppressed {e} ({reason})")?;
                }
                SuppressCommand::Remove { email } => {
                    let removed = store.unsuppress(&email).await?;
                    writeln!(
                        io.out,
                        "{}",
                        if removed {
                            format!("removed {email}")
                        } else {
                            format!("{email} was not suppressed")
                        }
                    )?;
                }
                SuppressCommand::List { json } => {
                    let rows = store.suppressions().await?;
                    if json {
                        writeln!(
                            io.out,
                            "{}",
                            serde_json::to_string(&rows).unwrap_or_default()
                        )?;
                    } else {
                        for r in rows {
                            writeln!(
                                io.out,
                                "{}\t{}\t{}",
                                r.email,
                                r.reason,
                                r.created_at.rfc3339()
                            )?;
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Model {
            command: ModelCommand::Rebuild,
        } => {
            let store = open_store(&s).await?;
            let started = std::time::Instant::now();
            let model = crate::jobs::load_model(&store).await?;
            writeln!(
                io.out,
                "model built in {:.2}s: {} products, {} orders, {} customers",
                started.elapsed().as_secs_f64(),
                model.product_count(),
                model.order_count(),
                model.customer_count()
            )?;
            Ok(())
        }
        Command::Backup { file } => super::packaging::backup(&s, &file, io).await,
        Command::Demo | Command::Bench(_) | Command::Completions { .. } => {
            unreachable!("handled above")
        }
    }
}

async fn import(s: &Settings, kind: &str, file: &str, io: &mut Io<'_>) -> Result<(), CliError> {
    let kind = Kind::parse(kind).map_err(CliError::Usage)?;
    let csv = file.to_ascii_lowercase().ends_with(".csv");
    if csv && !matches!(kind, Kind::Products | Kind::Customers) {
        return Err(CliError::Usage(format!(
            "{file}: CSV is accepted for products and customers only"
        )));
    }
    let (reader, size): (Box<dyn BufRead + Send>, Option<u64>) = if file == "-" {
        (Box::new(BufReader::new(std::io::stdin())), None)
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| CliError::BadInput(format!("{file}: cannot open: {e}")))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 20, f)), size)
    };
    let store = open_store(s).await?;
    let bar = (std::io::stderr().is_terminal() && size.is_some()).then(|| {
        let b = indicatif::ProgressBar::new(size.unwrap_or(0));
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = std::time::Instant::now();
    let report = import_reader(
        &store,
        kind,
        reader,
        csv,
        &schedule_rules(s),
        Timestamp::now(),
        |n| {
            if let Some(b) = &bar {
                b.set_position(n);
            }
        },
    )
    .await
    .map_err(|e| CliError::Runtime(e.to_string()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let name = if file == "-" { "<stdin>" } else { file };
    for b in &report.bad {
        writeln!(io.err, "{name}:{}: {}", b.line, b.error)?;
    }
    // Not bad input (the exit code stays 0): the stored order is further along or newer.
    for w in &report.warnings {
        writeln!(io.err, "{name}:{}: warning: {}", w.line, w.error)?;
    }
    let warned = match report.warnings.len() {
        0 => String::new(),
        n => format!(", {n} warning(s)"),
    };
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        io.out,
        "{name}: {} {} stored, {} bad line(s), {} follow-up(s) scheduled, {} cancelled{warned} ({:.0} records/s)",
        report.stored,
        kind.as_str(),
        report.bad.len(),
        report.scheduled,
        report.cancelled,
        report.stored as f64 / secs.max(1e-9)
    )?;
    if report.bad.is_empty() {
        Ok(())
    } else {
        Err(CliError::BadInput(format!(
            "{name}: {} bad line(s)",
            report.bad.len()
        )))
    }
}

fn pick_campaign<'a>(
    s: &'a Settings,
    name: Option<&str>,
) -> Result<&'a crate::config::Campaign, CliError> {
    match name {
        Some(n) => s
            .campaign(n)
            .ok_or_else(|| CliError::Usage(format!("no campaign named {n:?} in the config"))),
        None => s
            .default_campaign()
            .ok_or_else(|| CliError::Usage("the config has no enabled campaign".into())),
    }
}

async fn recommend(
    s: Settings,
    order_id: &str,
    campaign: Option<&str>,
    json: bool,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let campaign = pick_campaign(&s, campaign)?.clone();
    let store = open_store(&s).await?;
    let order = store
        .order(order_id)
        .await?
        .ok_or_else(|| CliError::BadInput(format!("no order {order_id:?}")))?;
    let engine = open_engine(s, store, Clock::System).await?;
    let history = engine.history(&order, Timestamp::now()).await?;
    let picks = engine.picks(&order, &campaign, history);
    if json {
        let items: Vec<_> = picks
            .iter()
            .map(|p| serde_json::json!({"product_id": p.product_id, "title": p.title, "price": p.price.decimal(), "url": p.url, "reason": p.reason}))
            .collect();
        let doc = serde_json::json!({"order_id": order_id, "campaign": campaign.name, "strategy": campaign.strategy.as_str(), "items": items});
        writeln!(io.out, "{doc}")?;
    } else {
        writeln!(
            io.out,
            "{} for order {order_id} ({}):",
            campaign.name,
            campaign.strategy.as_str()
        )?;
        if picks.is_empty() {
            writeln!(io.out, "  nothing to recommend")?;
        }
        for p in &picks {
            writeln!(
                io.out,
                "  {} {} ({}) — {}",
                p.product_id,
                p.title,
                p.price.decimal(),
                p.reason
            )?;
        }
    }
    Ok(())
}

async fn preview(
    s: Settings,
    campaign: &str,
    order_id: &str,
    out: Option<&std::path::Path>,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let campaign = pick_campaign(&s, Some(campaign))?.clone();
    let store = open_store(&s).await?;
    let engine = open_engine(s, store, Clock::System).await?;
    let p = engine
        .preview(order_id, &campaign)
        .await
        .map_err(CliError::BadInput)?;
    match out {
        Some(path) => {
            let is_html = path.extension().is_some_and(|e| e == "html" || e == "htm");
            let bytes = if is_html {
                p.rendered.html.clone().into_bytes()
            } else {
                crate::mail::build_message(&p.email)
                    .map_err(|e| CliError::Runtime(e.to_string()))?
                    .formatted()
            };
            std::fs::write(path, bytes)
                .map_err(|e| CliError::Runtime(format!("{}: {e}", path.display())))?;
            writeln!(io.out, "wrote {}", path.display())?;
        }
        None => {
            writeln!(
                io.out,
                "Subject: {}\nTo: {}\nMessage-ID: <{}>\n",
                p.email.subject, p.email.to, p.email.message_id
            )?;
            for i in &p.picks {
                writeln!(io.out, "* {} — {}", i.title, i.reason)?;
            }
            writeln!(
                io.out,
                "\n--- text ---\n{}\n--- html ---\n{}",
                p.rendered.text, p.rendered.html
            )?;
        }
    }
    Ok(())
}

async fn report(
    s: &Settings,
    campaign: Option<&str>,
    since: &str,
    json: bool,
    html: Option<&std::path::Path>,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let since = parse_duration(since).map_err(|why| CliError::Usage(format!("--since: {why}")))?;
    let store = open_store(s).await?;
    let r = crate::jobs::report(&store, s, Timestamp::now(), campaign, since)
        .await
        .map_err(|e| match e {
            crate::jobs::ReportError::UnknownCampaign(_) => CliError::Usage(e.to_string()),
            crate::jobs::ReportError::Store(e) => e.into(),
        })?;
    if let Some(path) = html {
        std::fs::write(path, crate::measure::html::render(&r, &s.store.name))
            .map_err(|e| CliError::Runtime(format!("cannot write {}: {e}", path.display())))?;
    }
    if json {
        let doc = serde_json::to_string(&r).map_err(|e| CliError::Runtime(e.to_string()))?;
        writeln!(io.out, "{doc}")?;
    } else {
        write!(io.out, "{}", r.to_text())?;
        if let Some(path) = html {
            writeln!(io.out, "HTML report written to {}", path.display())?;
        }
    }
    Ok(())
}

async fn status(s: &Settings, json: bool, io: &mut Io<'_>) -> Result<(), CliError> {
    let store = open_store(s).await?;
    let now = Timestamp::now();
    let r = store.status(now, Timestamp(now.0 - 30_000)).await?;
    // "paused" when any live worker holds its sends back because its relay failed.
    let paused: Vec<_> = r
        .workers
        .iter()
        .filter_map(|w| w.relay_paused.as_ref().map(|p| (w, p)))
        .collect();
    let relay = if paused.is_empty() { "ok" } else { "paused" };
    if json {
        let doc = serde_json::json!({
            "followups": r.followups, "skipped_by_reason": r.skipped_by_reason,
            "failed_by_reply": r.failed_by_reply, "bounces": r.bounces, "sent_last_24h": r.sent_last_24h,
            "next_due": r.next_due, "workers": r.workers, "template_errors": r.template_errors,
            "relay": relay,
        });
        writeln!(io.out, "{doc}")?;
        return Ok(());
    }
    writeln!(io.out, "follow-ups:")?;
    for (state, n) in &r.followups {
        writeln!(io.out, "  {state:<10} {n}")?;
    }
    if !r.skipped_by_reason.is_empty() {
        writeln!(io.out, "skipped by reason:")?;
        for (reason, n) in &r.skipped_by_reason {
            writeln!(io.out, "  {reason:<22} {n}")?;
        }
    }
    if !r.failed_by_reply.is_empty() {
        writeln!(io.out, "failed by reply:")?;
        for (reply, n) in &r.failed_by_reply {
            writeln!(io.out, "  {n:>6}  {reply}")?;
        }
    }
    if !r.bounces.is_empty() {
        writeln!(io.out, "bounce webhooks:")?;
        for (what, n) in &r.bounces {
            writeln!(io.out, "  {n:>6}  {what}")?;
        }
    }
    writeln!(io.out, "sent in the last 24 h: {}", r.sent_last_24h)?;
    writeln!(
        io.out,
        "next due: {}",
        r.next_due
            .map(|t| t.rfc3339())
            .unwrap_or_else(|| "-".into())
    )?;
    writeln!(io.out, "live workers: {}", r.workers.len())?;
    for w in &r.workers {
        writeln!(
            io.out,
            "  {} (host {}, pid {}, since {})",
            w.name,
            w.host,
            w.pid,
            w.started_at.rfc3339()
        )?;
    }
    if !paused.is_empty() {
        writeln!(
            io.out,
            "relay: PAUSED on {} of {} live worker(s): sends held back, follow-ups stay queued",
            paused.len(),
            r.workers.len()
        )?;
        for (w, p) in &paused {
            writeln!(
                io.out,
                "  {}: since {}, {} failed probe(s), next probe {}: {}",
                w.name,
                p.since.rfc3339(),
                p.failed_probes,
                p.next_probe_at.rfc3339(),
                p.reason
            )?;
        }
    }
    for (campaign, problem) in &r.template_errors {
        writeln!(io.out, "template error in {campaign}: {problem}")?;
    }
    Ok(())
}

async fn campaign(s: Settings, command: CampaignCommand, io: &mut Io<'_>) -> Result<(), CliError> {
    match command {
        CampaignCommand::List => {
            for c in &s.campaigns {
                writeln!(
                    io.out,
                    "{:<22} trigger={:<16} delay={:<8} strategy={:<12} max_items={} max_price_ratio={} {}",
                    c.name.as_str(),
                    format!("{:?}", c.trigger).to_lowercase(),
                    humantime::format_duration(c.delay).to_string(),
                    c.strategy.as_str(),
                    c.max_items,
                    c.max_price_ratio,
                    if c.enabled { "enabled" } else { "disabled" }
                )?;
            }
            Ok(())
        }
        CampaignCommand::Trigger {
            name,
            bought,
            since,
            dry_run,
        } => {
            let since =
                parse_duration(&since).map_err(|why| CliError::Usage(format!("--since: {why}")))?;
            let bought = bought
                .map(|b| ProductId::parse(&b))
                .transpose()
                .map_err(|why| CliError::Usage(format!("--bought: {why}")))?;
            let store = open_store(&s).await?;
            let engine = open_engine(s, store, Clock::System).await?;
            let report = crate::jobs::trigger(&engine, &name, bought.as_ref(), since, dry_run)
                .await
                .map_err(|e| match e {
                    TriggerError::UnknownCampaign(_) => CliError::Usage(e.to_string()),
                    other => CliError::Runtime(other.to_string()),
                })?;
            writeln!(io.out, "{}", report.describe())?;
            Ok(())
        }
    }
}

/// `evaluate --split-at TIME` or `--splits 0.8,0.85,0.9` (at most one is given).
struct Windows<'a> {
    split_at: Option<&'a str>,
    splits: Option<&'a str>,
}

/// Back-tests on an orders file; the catalog is the database's, or `products.jsonl`
/// beside the orders file when the database has none.
async fn evaluate(
    s: &Settings,
    path: &std::path::Path,
    Windows { split_at, splits }: Windows<'_>,
    k: usize,
    campaign: Option<&str>,
    json: bool,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let campaign = pick_campaign(s, campaign)?;
    let shares: Option<Vec<f64>> = splits
        .map(|list| {
            list.split(',')
                .map(|x| match x.trim().parse::<f64>() {
                    Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
                    _ => Err(CliError::Usage(format!(
                        "--splits: {x:?} is not a share between 0 and 1 (e.g. 0.8,0.85,0.9)"
                    ))),
                })
                .collect()
        })
        .transpose()?;
    let split = split_at
        .map(parse_rfc3339)
        .transpose()
        .map_err(|why| CliError::Usage(format!("--split-at: {why}")))?;
    if k == 0 {
        return Err(CliError::Usage("--k must be at least 1".into()));
    }
    let name = path.display().to_string();
    let text =
        std::fs::read(path).map_err(|e| CliError::BadInput(format!("{name}: cannot read: {e}")))?;
    let store = open_store(s).await?;
    let mut products = store.products().await?;
    if products.is_empty() {
        let beside = path.with_file_name("products.jsonl");
        let raw = std::fs::read(&beside).map_err(|e| {
            CliError::BadInput(format!(
                "the database has no products and {} cannot be read: {e}",
                beside.display()
            ))
        })?;
        for (i, line) in raw.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let p = crate::import::parse_json_line(line)
                .and_then(|v| crate::domain::Product::from_json(&v))
                .map_err(|e| CliError::BadInput(format!("{}:{}: {e}", beside.display(), i + 1)))?;
            products.push(p);
        }
    }
    let known: std::collections::HashSet<_> = products.iter().map(|p| p.id.clone()).collect();
    let mut orders = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match crate::import::parse_json_line(line)
            .and_then(|v| crate::domain::Order::from_json(&v, |p| known.contains(p)))
        {
            Ok(o) => orders.push(o),
            Err(e) => bad.push(format!("{name}:{}: {e}", i + 1)),
        }
    }
    if !bad.is_empty() {
        for b in &bad {
            writeln!(io.err, "{b}")?;
        }
        return Err(CliError::BadInput(format!(
            "{name}: {} bad line(s); nothing evaluated",
            bad.len()
        )));
    }
    if orders.is_empty() {
        return Err(CliError::BadInput(format!("{name}: no orders")));
    }
    let report = match &shares {
        Some(shares) => crate::recommend::evaluate_pooled(
            &products,
            &orders,
            shares,
            k,
            campaign.strategy,
            campaign.max_price_ratio,
            &Default::default(),
        ),
        None => crate::recommend::evaluate(
            &products,
            &orders,
            split,
            k,
            campaign.strategy,
            campaign.max_price_ratio,
            &Default::default(),
        ),
    };
    if json {
        writeln!(
            io.out,
            "{}",
            serde_json::to_string(&report).unwrap_or_default()
        )?;
    } else {
        writeln!(io.out, "{}", describe_eval(&report))?;
    }
    Ok(())
}

fn describe_eval(r: &crate::recommend::EvalReport) -> String {
    let mut s = format!(
        "evaluated {} customers' next order after {} (k = {})\n{:<14} {:>9} {:>9}\n",
        r.orders_tested,
        r.splits.join(", "),
        r.k,
        "",
        "hit rate",
        "coverage"
    );
    s.push_str(&format!(
        "{:<14} {:>9.3} {:>9.3}\n",
        "recommender", r.recommender.hit_rate, r.recommender.coverage
    ));
    s.push_str(&format!(
        "{:<14} {:>9.3} {:>9.3}",
        "popularity", r.popularity.hit_rate, r.popularity.coverage
    ));
    for (name, sc) in &r.per_strategy {
        s.push_str(&format!(
            "\n{:<14} {:>9.3} {:>9.3}",
            name, sc.hit_rate, sc.coverage
        ));
    }
    let g = &r.ranking;
    s.push_str(&format!(
        "\nhit-rate ratio {:.2} (95 % bootstrap interval {:.2} to {:.2})\n{:<14} {:>4} {:>7} {:>7} {:>7}",
        g.hit_ratio, g.hit_ratio_ci95[0], g.hit_ratio_ci95[1], "", "k", "hit", "recall", "mrr"
    ));
    for (side, t) in [
        ("recommender", &g.recommender),
        ("popularity", &g.popularity),
    ] {
        for (k, m) in t {
            s.push_str(&format!(
                "\n{side:<14} {k:>4} {:>7.3} {:>7.3} {:>7.3}",
                m.hit, m.recall, m.mrr
            ));
        }
    }
    s
}
