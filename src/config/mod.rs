//! Configuration: from `conf/*.toml` to the validated runtime state.
//!
//! The path is file → [`file::FileConfig`] (the serde mirror, shape only) → [`runtime::Config`]
//! (validated, typed, ready for the request path). `-c` takes a file or a directory; a directory
//! loads every `*.toml` in it in name order and appends their tables, and a key set in two files is
//! an error. Every problem is reported with the file that holds it (see [`Sources`]).

mod auth;
mod cors;
pub mod error;
pub mod file;
pub mod listeners;
mod production;
mod ratelimit;
mod routes;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod sources;
mod tls;
pub mod units;
pub mod upstreams;

use std::path::{Path, PathBuf};

pub use crate::pipeline::Runtime;
pub use error::{ConfigError, ConfigErrors};
pub use runtime::Config;
pub use sources::{Problems, Sources};

use file::FileConfig;
use serde::Deserialize;

/// Loads and validates the configuration at `path` (a file or a directory of `*.toml`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let files = list_files(path)?;
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => texts.push((file.display().to_string(), text)),
            Err(e) => errors.push(file_error(
                &file.display().to_string(),
                format!("cannot be read ({e})"),
                "check the path and its permissions",
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    load_texts(path, &texts, files)
}

/// Validates a configuration given as TOML text, as if it were one file named `<inline>`:
/// for tests and tools that build a [`Runtime`] without writing a file.
pub fn load_str(text: &str) -> Result<Config, ConfigErrors> {
    load_texts(Path::new("<inline>"), &[("<inline>".to_string(), text.to_string())], Vec::new())
}

/// Merges and validates `texts` ((file name as shown, contents), in load order).
fn load_texts(root: &Path, texts: &[(String, String)], files: Vec<PathBuf>) -> Result<Config, ConfigErrors> {
    let mut merged = toml::Table::new();
    let mut sources = Sources::new(root);
    let mut errors = Vec::new();
    for (shown, text) in texts {
        // The typed pass reports unknown keys and wrong types with the key path and line.
        if let Err(e) = check_shape(shown, text) {
            errors.push(e);
            continue;
        }
        match text.parse::<toml::Table>() {
            Ok(table) => sources.merge(&mut merged, table, shown, &mut errors),
            Err(e) => errors.push(file_error(shown, e.message().to_string(), "fix the TOML syntax")),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let file_config = FileConfig::deserialize(toml::Value::Table(merged))
        .map_err(|e| file_error(&sources.root, e.message().to_string(), "check the tables shared between files"))?;
    runtime::build(&file_config, &sources, files)
}

/// The files `-c PATH` names: the file itself, or a directory's `*.toml` in name order.
fn list_files(path: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| file_error(&shown, format!("cannot be read ({e})"), "pass an existing file or directory to -c"))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| file_error(&shown, format!("cannot be listed ({e})"), "check its permissions"))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(
            file_error(&shown, "holds no *.toml file".into(), "put the configuration in FILE.toml inside it").into()
        );
    }
    Ok(files)
}

fn check_shape(shown: &str, text: &str) -> Result<(), ConfigError> {
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| file_error(shown, describe_toml_error(text, &e), "fix the TOML syntax"))?;
    match serde_path_to_error::deserialize::<_, FileConfig>(deserializer) {
        Ok(_) => Ok(()),
        Err(e) => {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = describe_toml_error(text, &inner);
            let fix = if message.contains("unknown field") {
                "remove it or correct its spelling (see the configuration reference in README.md)"
            } else {
                "give it a value of the type the configuration reference in README.md shows"
            };
            Err(ConfigError {
                file: shown.to_string(),
                key: if key == "." { String::new() } else { key },
                problem: message,
                fix: fix.to_string(),
            })
        }
    }
}

/// toml's message with the line it points at, on one line.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{message} (line {line})")
        }
        None => message,
    }
}

fn file_error(file: &str, problem: String, fix: &str) -> ConfigError {
    ConfigError { file: file.to_string(), key: String::new(), problem, fix: fix.to_string() }
}
