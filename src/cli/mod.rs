//! The command line (SPEC §4): parses arguments, calls the library (`app` opens what a
//! command needs), reports. Output goes to the writers it is given; [`CliError`] says
//! which exit code a failure deserves and `main` exits with it.

mod bench;
mod commands;
mod demo;
mod packaging;
mod privacy;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "aftercart",
    // The git revision comes from build.rs ("unknown" when built outside a checkout).
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("AFTERCART_GIT_REV"), ")"),
    about = "Post-purchase follow-up emails with recommendations that help"
)]
pub struct Cli {
    /// Config file (default: ./config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Creates or upgrades the database schema.
    Migrate,
    /// Loads products, customers, orders or events (JSON Lines; CSV for products and customers).
    Import {
        /// products | customers | orders | events
        kind: String,
        /// A file, or - for standard input.
        file: String,
    },
    /// Runs the job queue until SIGINT/SIGTERM.
    Worker,
    /// HTTP API and, unless --no-worker, the worker in one process.
    Serve {
        #[arg(long)]
        no_worker: bool,
    },
    /// The items a campaign would pick now for an order, each with its reason.
    Recommend {
        #[arg(long)]
        order: String,
        #[arg(long)]
        campaign: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Renders a campaign's email for an order without sending it.
    Preview {
        #[arg(long)]
        campaign: String,
        #[arg(long)]
        order: String,
        /// Write the message here (.eml for the MIME message, .html for the HTML part).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Template tools.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
    /// Marketing's one-off campaigns.
    Campaign {
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// Follow-ups by state, sends in the last 24 h, next due, live workers.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Lists follow-ups (or re-queues failed ones: `followups retry`).
    Followups(FollowupsArgs),
    /// Back-tests the recommender on order history against a popularity baseline.
    Evaluate {
        #[arg(long)]
        orders: PathBuf,
        #[arg(long)]
        split_at: Option<String>,
        /// Several chronological windows pooled: shares of the orders before each split
        /// ("0.8,0.85,0.9"); not with --split-at.
        #[arg(long, conflicts_with = "split_at")]
        splits: Option<String>,
        #[arg(long, default_value_t = 3)]
        k: usize,
        #[arg(long)]
        campaign: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The suppression list (hard bounces, complaints, manual).
    Suppress {
        #[command(subcommand)]
        command: SuppressCommand,
    },
    /// The recommendation model.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// "Did it help?": sends, clicks, attributed revenue, recipients vs holdout.
    Report {
        /// One campaign (default: every configured one).
        #[arg(long)]
        campaign: Option<String>,
        /// Follow-ups due within this before now.
        #[arg(long, default_value = "30d")]
        since: String,
        /// One JSON document on stdout (SPEC §8).
        #[arg(long)]
        json: bool,
        /// Also write the HTML page (SVG charts, no scripts) to this file.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Erases a customer's personal data (email, name, events); the ledger keeps its keys.
    Forget {
        /// A customer id or an email address (every customer with it).
        #[arg(value_name = "CUSTOMER_ID|EMAIL")]
        who: String,
        #[arg(long)]
        json: bool,
    },
    /// Everything stored about a customer, as one JSON document.
    ExportCustomer {
        /// A customer id or an email address (every customer with it).
        #[arg(value_name = "CUSTOMER_ID|EMAIL")]
        who: String,
    },
    /// Runs the whole flow on a sample store with time compressed; emails go to outbox/.
    Demo,
    /// Throughput on this machine: imports N generated orders into a fresh database and
    /// drains their follow-ups against Postfix's smtp-sink, beside smtp-source's ceiling.
    Bench(bench::BenchArgs),
    /// Copies the SQLite database to FILE while it is in use (PostgreSQL: use pg_dump).
    Backup {
        /// The copy; must not exist yet.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Prints a shell completion script to stdout.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// The shells `completions` writes a script for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Parses every template and renders each campaign with sample data.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Campaigns in the config.
    List,
    /// Sends a campaign to a segment: buyers of a product within a window, or all consenting customers.
    Trigger {
        name: String,
        #[arg(long)]
        bought: Option<String>,
        #[arg(long, default_value = "30d")]
        since: String,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct FollowupsArgs {
    #[command(subcommand)]
    pub command: Option<FollowupsCommand>,
    #[arg(long)]
    pub order: Option<String>,
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum FollowupsCommand {
    /// Re-queues failed follow-ups (never sent or skipped ones).
    Retry {
        #[arg(long)]
        order: Option<String>,
        #[arg(long)]
        state: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SuppressCommand {
    Add {
        email: String,
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    Remove {
        email: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Builds the model from the database now and prints its size.
    Rebuild,
}

/// A failed command: `main` exits 2 for usage and input errors, 1 for runtime ones.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::BadInput(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        CliError::Runtime(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Runtime(e.to_string())
    }
}

impl From<crate::config::ConfigError> for CliError {
    fn from(e: crate::config::ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<crate::app::AppError> for CliError {
    fn from(e: crate::app::AppError) -> Self {
        use crate::app::AppError as E;
        match e {
            // Bad settings are bad usage (SPEC §2: refused at start, exit 2), a broken
            // template bad input; the rest happened at run time.
            E::Config(_) | E::NoConfig | E::Smtp { .. } => CliError::Usage(e.to_string()),
            E::Templates(_) => CliError::BadInput(e.to_string()),
            E::Store(_) | E::Http(_) | E::Task(_) => CliError::Runtime(e.to_string()),
        }
    }
}

/// Output streams of a command.
pub struct Io<'a> {
    pub out: &'a mut (dyn std::io::Write + Send),
    pub err: &'a mut (dyn std::io::Write + Send),
}

pub async fn run(cli: Cli, io: &mut Io<'_>) -> Result<(), CliError> {
    commands::dispatch(cli, io).await
}
