//! The command line: `portcullis [run] -c PATH`, `portcullis check -c PATH`, `--version`.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::runtime::ECHO_TARGET;
use crate::config::Config;
use crate::pipeline::host::HostPattern;
use crate::pipeline::route::AuthMode;
use crate::pipeline::upstream::Targets;

/// The configuration used when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "conf/gateway.toml";

/// The exit code for configuration errors (sysexits' `EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;

/// Portcullis: an authentication gateway on Pingora.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, long_about = None)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file, or a directory whose *.toml files are loaded in name order.
    #[arg(short = 'c', long = "config", global = true, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Start the gateway (the default).
    Run,
    /// Load and validate the configuration, print a summary, and exit (78 on errors).
    Check,
}

/// The summary `portcullis check` prints for a valid configuration.
pub fn summary(config: &Config) -> String {
    let mut out = String::new();
    let files: Vec<String> = config.files.iter().map(|f| f.display().to_string()).collect();
    let _ = writeln!(out, "configuration OK: {}", files.join(", "));
    let _ = writeln!(out, "listeners:");
    for l in &config.process.listeners {
        let _ = writeln!(out, "  http://{}{}", l.address, if l.h2c { " (h2c)" } else { "" });
    }
    let rt = &config.runtime;
    let _ = writeln!(out, "upstreams:");
    for u in &rt.upstreams {
        let targets = match &u.targets {
            Targets::Echo => ECHO_TARGET.to_string(),
            Targets::Servers(s) => s.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        };
        let _ = writeln!(out, "  {} -> {}", u.name, targets);
    }
    let _ = writeln!(out, "routes:");
    for r in rt.routes.routes() {
        let methods = r
            .methods
            .as_ref()
            .map_or_else(|| "*".to_string(), |m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","));
        let host = match &r.host {
            None => String::new(),
            Some(HostPattern::Any) => "*".to_string(),
            Some(HostPattern::Exact(h)) => h.to_string(),
            Some(HostPattern::Subdomains(s)) => format!("*{s}"),
        };
        let auth = match r.auth {
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::None => "none",
        };
        let upstream = rt.upstreams.get(r.upstream).map_or("?", |u| &u.name);
        let _ = writeln!(out, "  {:<16} {:<12} {}{} -> {} (auth: {})", r.name, methods, host, r.path, upstream, auth);
    }
    out
}
