//! The CLI commands' bodies: each opens the same store `serve` uses (WAL lets them run side by side).

// The administrative commands answer on stdout/stderr: that is their output, not logging.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;

use crate::bootstrap::{self, BootstrapError};
use crate::config::{Config, StoreEngine};
use crate::ids::OperatorId;
use crate::iot_sim_csv::{self, CsvError};
use crate::server::{self, ServeError};
use crate::store::db::Backend;
use crate::store::operators;
use crate::store::subscriptions::{self, IotSimImport};
use crate::store::{Rule, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error("{0}")]
    Usage(String),
}

/// Runs the server with the data directory locked for the whole process: a second `serve` on
/// the same directory exits at once.
pub fn serve(config: Config, reinitialize: bootstrap::Reinitialize) -> Result<(), CommandError> {
    let _lock = bootstrap::lock_data_dir(&config.data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)?;
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let running = server::start_with(config, reinitialize).await?;
        if let Some(root) = &running.new_root_credentials {
            // Shown once; the same values are in root-credentials.json (mode 0600).
            println!("arcd first start: root operator {}", root.operator_id);
            println!("  authKeyId: {}", root.auth_key_id);
            println!("  authKey:   {}", root.auth_key);
            println!(
                "  saved to {}",
                data_dir.join(bootstrap::ROOT_CREDENTIALS_FILE).display()
            );
        }
        tokio::select! {
            // The first poll of shutdown_signal() installs the SIGTERM/SIGINT handlers; only then
            // does systemd hear READY=1, so a stop right after readiness still shuts down cleanly.
            biased;
            _ = shutdown_signal() => {
                crate::service_notify::stopping();
                tracing::info!("shutting down");
                running.shutdown().await;
            }
            _ = crate::service_notify::ready_then_wait() => {}
        }
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `arcd backup`: prints what was written as JSON.
pub fn backup(config: &Config, output: &Path) -> Result<(), CommandError> {
    let summary = crate::backup::backup(config, output)?;
    print_json(&summary);
    Ok(())
}

/// `arcd store copy`: the SQLite store of `from` into the empty PostgreSQL store of `to`, with
/// `from`'s data directory locked (no `arcd serve` on it during the copy); prints rows per table
/// as JSON.
pub fn copy_store(from: &Config, to: &Config) -> Result<(), CommandError> {
    let engines = (from.store.engine, to.store.engine);
    if engines != (StoreEngine::Sqlite, StoreEngine::Postgres) {
        return Err(CommandError::Usage(format!(
            "store copy goes from a SQLite configuration to a PostgreSQL one; got {:?} to {:?}",
            engines.0, engines.1
        )));
    }
    let _lock = bootstrap::lock_data_dir(&from.data_dir)?;
    // Opening a missing database would create an empty one and "copy" nothing.
    let database = from.data_dir.join(bootstrap::DATABASE_FILE);
    if !database.exists() {
        return Err(CommandError::Usage(format!(
            "store copy: the source has no database ({} does not exist)",
            database.display()
        )));
    }
    let source = bootstrap::open_store(from)?;
    let destination = bootstrap::open_store(to)?;
    let summary = crate::store::copy::copy(&source, &destination)?;
    tracing::info!(tables = summary.rows.len(), "store copied");
    print_json(&summary.rows);
    Ok(())
}

/// `arcd restore`: prints what was replaced as JSON; warnings also go to the log.
pub fn restore(config: &Config, input: &Path) -> Result<(), CommandError> {
    let summary = crate::backup::restore(config, input)?;
    for warning in &summary.warnings {
        tracing::warn!("{warning}");
    }
    print_json(&summary);
    Ok(())
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NewCredentials<'a> {
    operator_id: &'a OperatorId,
    auth_key_id: &'a str,
    auth_key: &'a str,
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("arcd: cannot print result: {e}"),
    }
}

pub fn create_operator(config: &Config) -> Result<(), CommandError> {
    let store = bootstrap::open_store(config)?;
    let (operator_id, key) = store.write_db(|db| {
        let operator_id = operators::create_operator(db)?;
        let key = operators::create_auth_key(db, &operator_id)?;
        Ok((operator_id, key))
    })?;
    print_json(&NewCredentials {
        operator_id: &operator_id,
        auth_key_id: &key.auth_key_id,
        auth_key: &key.secret,
    });
    Ok(())
}

pub fn create_auth_key(config: &Config, operator_id: &OperatorId) -> Result<(), CommandError> {
    let store = bootstrap::open_store(config)?;
    let key = store.write_db(|db| operators::create_auth_key(db, operator_id))?;
    print_json(&NewCredentials {
        operator_id,
        auth_key_id: &key.auth_key_id,
        auth_key: &key.secret,
    });
    Ok(())
}

pub fn import_iot_sims(
    config: &Config,
    file: &Path,
    operator_id: &OperatorId,
) -> Result<(), CommandError> {
    let rows = iot_sim_csv::read(file)?;
    let store = bootstrap::open_store(config)?;
    let lines: Vec<u64> = rows.iter().map(|(line, _)| *line).collect();
    let items: Vec<IotSimImport> = rows.into_iter().map(|(_, item)| item).collect();
    if !store.read_db(|db| operators::operator_exists(db, operator_id))? {
        return Err(StoreError::NotFound(crate::store::Entity::Operator).into());
    }
    let coverage = config.coverage.default;
    let imported = store
        .write_db(|db| subscriptions::import_iot_sims(db, operator_id, coverage, &items))
        .map_err(|e| match e {
            StoreError::Rule(Rule::ImportItem { index, message }) => CommandError::Csv(CsvError {
                file: file.display().to_string(),
                message: format!(
                    "line {}: {message}; nothing was imported",
                    lines.get(index).copied().unwrap_or(0)
                ),
            }),
            other => other.into(),
        })?;
    println!("imported {} IoT SIMs for {operator_id}", imported.len());
    Ok(())
}
