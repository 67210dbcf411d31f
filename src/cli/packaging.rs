//! What operators install and schedule around the binary: `completions` (a shell
//! completion script) and `backup` (an online copy of the SQLite database).

use super::{Cli, CliError, CompletionShell, Io};
use crate::config::Settings;
use crate::store::{BackupError, Store};
use std::path::Path;

pub(super) fn completions(shell: CompletionShell, io: &mut Io<'_>) -> Result<(), CliError> {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    // Into a buffer first: clap_complete panics on a failed write (a closed pipe), and
    // this way that is an ordinary error.
    let mut script = Vec::new();
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "aftercart", &mut script);
    io.out.write_all(&script)?;
    Ok(())
}

pub(super) async fn backup(s: &Settings, file: &Path, io: &mut Io<'_>) -> Result<(), CliError> {
    // The database as it is, not migrated first: a backup taken before an upgrade keeps
    // the schema the old binary can go back to.
    let store = Store::connect(&s.database.url, s.database.max_connections).await?;
    let written = store.backup_to(file).await;
    store.close().await;
    let backup = written.map_err(|e| match e {
        BackupError::Exists(_) | BackupError::Postgres | BackupError::NoSchema => {
            CliError::Usage(e.to_string())
        }
        BackupError::File { .. } | BackupError::Store(_) => CliError::Runtime(e.to_string()),
    })?;
    let path = std::fs::canonicalize(&backup.path).unwrap_or(backup.path);
    writeln!(
        io.out,
        "backup written to {} ({}, {} bytes)",
        path.display(),
        indicatif::HumanBytes(backup.bytes),
        backup.bytes
    )?;
    Ok(())
}
