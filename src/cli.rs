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
    /// Make or hash API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `portcullis keys ...`.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum KeysCommand {
    /// Make a new random key: prints it once, and the [[auth.api_key]] block to paste.
    Generate {
        /// The key id (in logs, metrics and X-Auth-Key-Id).
        #[arg(long)]
        id: String,
        /// Comma-separated permissions, e.g. read_models,run_inference.
        #[arg(long, value_delimiter = ',')]
        permissions: Vec<String>,
        /// Expiry from now, e.g. 90d or 12h.
        #[arg(long = "expires-in")]
        expires_in: Option<String>,
    },
    /// Read a key on standard input and print its hash line.
    Hash,
}

/// `portcullis keys generate`: the output, or what is wrong with the arguments.
pub fn generate_key(id: &str, permissions: &[String], expires_in: Option<&str>) -> Result<String, String> {
    use crate::pipeline::auth::apikey;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
        return Err(format!("--id \"{id}\" must be printable ASCII without quotes"));
    }
    if let Some(bad) = permissions.iter().find(|p| !crate::pipeline::auth::is_permission_name(p)) {
        return Err(format!("--permissions: \"{bad}\" is not a permission name"));
    }
    let expires = match expires_in {
        None => None,
        Some(text) => {
            let after =
                crate::config::units::parse_duration(text).map_err(|e| format!("--expires-in: {e}; use e.g. 90d"))?;
            Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now() + after).to_string())
        }
    };
    let key = apikey::generate()?;
    let mut out = String::new();
    let _ = writeln!(out, "# The new key, shown this once (only its hash is stored):");
    let _ = writeln!(out, "{key}");
    let _ = writeln!(out, "# Add this to the configuration:");
    let _ = writeln!(out, "[[auth.api_key]]");
    let _ = writeln!(out, "id = \"{id}\"");
    let _ = writeln!(out, "hash = \"{}\"", apikey::hash_line(&key));
    let quoted: Vec<String> = permissions.iter().map(|p| format!("\"{p}\"")).collect();
    let _ = writeln!(out, "permissions = [{}]", quoted.join(", "));
    if let Some(at) = expires {
        let _ = writeln!(out, "expires = \"{at}\"");
    }
    Ok(out)
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
    let _ = writeln!(
        out,
        "api keys: {} (read from Authorization: Bearer and {})",
        rt.auth.keys.len(),
        rt.auth.api_key_headers.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ")
    );
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
        let permissions =
            if r.permissions.is_empty() { String::new() } else { format!(", needs {}", r.permissions.join(" + ")) };
        let _ = writeln!(
            out,
            "  {:<16} {:<12} {}{} -> {} (auth: {}{})",
            r.name, methods, host, r.path, upstream, auth, permissions
        );
    }
    out
}
