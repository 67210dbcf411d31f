//! The thin binary: parse the command line, call the library, choose the exit code.

use clap::Parser;

fn main() {
    let cli = aftercart::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AFTERCART_LOG")
                .unwrap_or_else(|_| "warn,aftercart=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut io = aftercart::cli::Io {
        out: &mut out,
        err: &mut err,
    };
    let result = runtime.block_on(aftercart::cli::run(cli, &mut io));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
