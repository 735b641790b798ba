//! Command line: `arcd serve` (default) and the administrative commands, all taking `--config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "arcd",
    version,
    about = "Self-hosted rendezvous point for virtual SIMs: SORACOM-compatible API, WireGuard data plane",
    long_about = "arcd serves a SORACOM-compatible API for Arc virtual SIM/Subscribers and the WireGuard \
                  rendezvous point devices connect to. Every command reads the same configuration: built-in \
                  defaults, then --config FILE (TOML), then ARCD_* environment variables (nested keys with __, \
                  e.g. ARCD_API__LISTEN). Administrative commands work while `arcd serve` is running, except `restore`."
)]
pub struct Cli {
    /// Configuration file (TOML); see config/arcd.toml for every key and its default.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "ARCD_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the API and the rendezvous points (the default when no command is given).
    Serve(ServeArgs),
    /// Manage operators (tenants).
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Manage auth keys (the authKeyId/authKey pairs POST /v1/auth takes).
    #[command(subcommand)]
    Authkey(AuthkeyCommand),
    /// Register existing IoT SIMs so virtual subscribers can be added to them.
    #[command(subcommand)]
    Iotsim(IotsimCommand),
    /// Write a consistent copy of the database to FILE while `arcd serve` keeps running (SQLite's
    /// online backup API). The database holds every key and address devices depend on; copy
    /// root-credentials.json and the TLS files of the data directory once, separately.
    Backup {
        /// File to write (mode 0600: it holds the rendezvous points' private keys).
        #[arg(long, short = 'o', value_name = "FILE")]
        output: PathBuf,
    },
    /// Replace the database with a backup made by `arcd backup`. Stop `arcd serve` first (restore
    /// refuses while it runs); the replaced database is kept beside it. Start `arcd serve` after.
    Restore {
        /// Backup file to restore.
        #[arg(long, short = 'i', value_name = "FILE")]
        input: PathBuf,
    },
    /// Move a box's state between store engines.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print the version.
    Version,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy the SQLite store of one configuration into the empty PostgreSQL store of another,
    /// offline (stop `arcd serve` on the source first; its data directory stays locked for the
    /// copy). Every row moves as it is: devices keep their keys, addresses and sessions. Copy
    /// root-credentials.json and the TLS files of the data directory separately.
    Copy {
        /// Configuration whose `[store]` is SQLite (its data_dir holds arcd.sqlite).
        #[arg(long, value_name = "SQLITE_CONFIG")]
        from: PathBuf,
        /// Configuration whose `[store]` is PostgreSQL (engine = "postgres", url).
        #[arg(long, value_name = "POSTGRES_CONFIG")]
        to: PathBuf,
    },
}

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Start over on a data directory that still holds root-credentials.json (or a generated
    /// tls-key.pem) from an earlier database that is now missing, empty or has no root operator:
    /// makes a new root operator, auth key and rendezvous point keys and overwrites
    /// root-credentials.json. Without it, arcd refuses to start on such a directory.
    #[arg(long)]
    pub reinitialize: bool,
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Create an operator and its first auth key; prints them as JSON (the secret only this once).
    Create,
}

#[derive(Subcommand, Debug)]
pub enum AuthkeyCommand {
    /// Create an auth key for an operator; prints it as JSON (the secret only this once).
    Create {
        /// Operator id, e.g. OP0012345678.
        #[arg(long)]
        operator: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum IotsimCommand {
    /// Import IoT SIMs from a CSV file with the header `iccid,imsi,msisdn,subscription`.
    /// All rows are imported or none: the first bad row is reported with its line number.
    Import {
        /// CSV file to read.
        file: PathBuf,
        /// Operator that owns the SIMs.
        #[arg(long)]
        operator: String,
    },
}
