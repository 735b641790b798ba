// The binary reports configuration and command errors on stderr before logging exists.
#![allow(clippy::print_stdout, clippy::print_stderr)]
use std::process::ExitCode;

use clap::Parser;

use arcd::bootstrap::Reinitialize;
use arcd::cli::{
    AuthkeyCommand, Cli, Command, IotsimCommand, OperatorCommand, ServeArgs, StoreCommand,
};
use arcd::config::{Config, LogFormat};
use arcd::ids::OperatorId;

/// Exit status for configuration errors, as scripts expect.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Version)) {
        println!("arcd {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("arcd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&config);
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            let reinitialize = if args.reinitialize {
                Reinitialize::Allow
            } else {
                Reinitialize::Refuse
            };
            arcd::commands::serve(config, reinitialize)
        }
        Command::Operator(OperatorCommand::Create) => arcd::commands::create_operator(&config),
        Command::Authkey(AuthkeyCommand::Create { operator }) => {
            arcd::commands::create_auth_key(&config, &OperatorId::new(operator))
        }
        Command::Iotsim(IotsimCommand::Import { file, operator }) => {
            arcd::commands::import_iot_sims(&config, &file, &OperatorId::new(operator))
        }
        Command::Backup { output } => arcd::commands::backup(&config, &output),
        Command::Restore { input } => arcd::commands::restore(&config, &input),
        Command::Store(StoreCommand::Copy { from, to }) => {
            let (from, to) = match (Config::load(Some(&from)), Config::load(Some(&to))) {
                (Ok(from), Ok(to)) => (from, to),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("arcd: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            arcd::commands::copy_store(&from, &to)
        }
        Command::Version => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arcd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let from_env = std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV).ok();
    let filter = from_env
        .as_deref()
        .filter(|spec| !spec.trim().is_empty())
        .map(arcd::logging::filter)
        .and_then(Result::ok)
        .or_else(|| arcd::logging::filter(&config.log.level).ok())
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new(format!(
                "info,{}",
                arcd::logging::BORINGTUN_TIMERS_OFF
            ))
        });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line with the event's fields at the top level (`"route":"/v1/sims"`),
        // as log collectors index them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
