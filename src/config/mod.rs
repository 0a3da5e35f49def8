//! Configuration: from `conf/*.toml` to the validated runtime state.
//!
//! The path is file → [`file::FileConfig`] (the serde mirror, shape only) → [`runtime::Config`]
//! (validated, typed, ready for the request path). `-c` takes a file or a directory; a directory
//! loads every `*.toml` in it in name order and appends their tables, and a key set in two files is
//! an error. Every problem is reported with the file that holds it (see [`Sources`]).

mod auth;
mod edge;
pub mod error;
pub mod file;
mod production;
pub mod runtime;
mod tls;
pub mod units;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors};
pub use runtime::{Config, Runtime};

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

/// The path of a `file:` secret: a leading `$CREDENTIALS_DIRECTORY` (or `${CREDENTIALS_DIRECTORY}`)
/// is the directory systemd's `LoadCredential=` fills, taken from the environment.
pub fn secret_path(path: &str) -> Result<std::path::PathBuf, String> {
    let rest = path.strip_prefix("${CREDENTIALS_DIRECTORY}").or_else(|| path.strip_prefix("$CREDENTIALS_DIRECTORY"));
    match rest {
        None => Ok(std::path::PathBuf::from(path)),
        Some(rest) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Ok(std::path::PathBuf::from(format!("{}{rest}", dir.to_string_lossy()))),
            None => Err("names $CREDENTIALS_DIRECTORY, which is not set (systemd sets it with LoadCredential=)".into()),
        },
    }
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

/// Where each key of the merged configuration came from, so that a validation error about
/// `route[3].upstream` can say `conf/routes.toml: route[1].upstream`.
#[derive(Debug)]
pub struct Sources {
    root: String,
    /// merged key path → (file, key path inside that file).
    origin: HashMap<String, (String, String)>,
}

impl Sources {
    fn new(root: &Path) -> Self {
        Sources { root: root.display().to_string(), origin: HashMap::new() }
    }

    /// Merges one file's table into `merged`: arrays of tables are appended, tables are merged
    /// key by key, and any other key present in both is an error.
    fn merge(&mut self, merged: &mut toml::Table, table: toml::Table, file: &str, errors: &mut Vec<ConfigError>) {
        self.merge_at(merged, table, file, "", "", errors);
    }

    fn merge_at(
        &mut self,
        merged: &mut toml::Table,
        table: toml::Table,
        file: &str,
        merged_prefix: &str,
        local_prefix: &str,
        errors: &mut Vec<ConfigError>,
    ) {
        for (key, value) in table {
            let merged_key = join(merged_prefix, &key);
            let local_key = join(local_prefix, &key);
            match (merged.get_mut(&key), value) {
                (Some(toml::Value::Array(existing)), toml::Value::Array(more))
                    if is_table_array(existing) && is_table_array(&more) =>
                {
                    let offset = existing.len();
                    for (i, item) in more.into_iter().enumerate() {
                        self.record_tree(
                            &item,
                            file,
                            &format!("{merged_key}[{}]", offset + i),
                            &format!("{local_key}[{i}]"),
                        );
                        existing.push(item);
                    }
                }
                (Some(toml::Value::Table(existing)), toml::Value::Table(more)) => {
                    self.merge_at(existing, more, file, &merged_key, &local_key, errors);
                }
                (Some(_), _) => {
                    let (first, _) = self.locate(&merged_key);
                    errors.push(ConfigError {
                        file: file.to_string(),
                        key: local_key,
                        problem: format!("is also set in {first}"),
                        fix: "set each key in one file only".to_string(),
                    });
                }
                (None, value) => {
                    self.record_tree(&value, file, &merged_key, &local_key);
                    merged.insert(key, value);
                }
            }
        }
    }

    fn record_tree(&mut self, value: &toml::Value, file: &str, merged_key: &str, local_key: &str) {
        self.origin.insert(merged_key.to_string(), (file.to_string(), local_key.to_string()));
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    self.record_tree(v, file, &join(merged_key, k), &join(local_key, k));
                }
            }
            toml::Value::Array(items) if is_table_array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.record_tree(v, file, &format!("{merged_key}[{i}]"), &format!("{local_key}[{i}]"));
                }
            }
            _ => {}
        }
    }

    /// The file and in-file key path for a merged key path. A key that no file set (a missing
    /// key, reported against the table that lacks it) resolves through its nearest parent.
    pub fn locate(&self, merged_key: &str) -> (String, String) {
        let mut prefix = merged_key;
        loop {
            if let Some((file, local)) = self.origin.get(prefix) {
                return (file.clone(), format!("{local}{}", &merged_key[prefix.len()..]));
            }
            match prefix.rfind(['.', '[']) {
                Some(cut) => prefix = &prefix[..cut],
                None => return (self.root.clone(), merged_key.to_string()),
            }
        }
    }

    /// A [`ConfigError`] about `merged_key`, placed in the file that holds it.
    pub fn error(&self, merged_key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        let (file, key) = self.locate(merged_key);
        ConfigError { file, key, problem: problem.into(), fix: fix.into() }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn is_table_array(items: &[toml::Value]) -> bool {
    !items.is_empty() && items.iter().all(toml::Value::is_table)
}

/// Collects every problem of one validation pass, each placed in its file.
pub struct Problems<'a> {
    sources: &'a Sources,
    errors: Vec<ConfigError>,
}

impl<'a> Problems<'a> {
    /// An empty collector over `sources`.
    pub fn new(sources: &'a Sources) -> Self {
        Problems { sources, errors: Vec::new() }
    }

    /// Records that `key` (a merged key path) is wrong, and how to fix it.
    pub fn push(&mut self, key: &str, problem: impl Into<String>, fix: impl Into<String>) {
        self.errors.push(self.sources.error(key, problem, fix));
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The problems found, or `Ok(value)` when there were none.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}
