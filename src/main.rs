//! The `portcullis` binary: parse the command line, load the configuration, run or check.

use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match portcullis::config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("portcullis: the configuration has {} error(s); nothing was started", errors.0.len());
            return ExitCode::from(cli::EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            print!("{}", cli::summary(&config));
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_logging(&config.process.log_level);
            portcullis::run(config)
        }
    }
}

/// Structured (JSON lines) logs on stderr; `RUST_LOG` overrides `[log] level`.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
}
