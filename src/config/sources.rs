//! Where each key of a merged configuration came from, and the collector of validation problems
//! that places each one in its file.

use std::collections::HashMap;
use std::path::Path;

use super::error::{ConfigError, ConfigErrors};

/// Where each key of the merged configuration came from, so that a validation error about
/// `route[3].upstream` can say `conf/routes.toml: route[1].upstream`.
#[derive(Debug)]
pub struct Sources {
    pub(super) root: String,
    /// merged key path → (file, key path inside that file).
    origin: HashMap<String, (String, String)>,
}

impl Sources {
    pub(super) fn new(root: &Path) -> Self {
        Sources { root: root.display().to_string(), origin: HashMap::new() }
    }

    /// Merges one file's table into `merged`: arrays of tables are appended, tables are merged
    /// key by key, and any other key present in both is an error.
    pub(super) fn merge(
        &mut self,
        merged: &mut toml::Table,
        table: toml::Table,
        file: &str,
        errors: &mut Vec<ConfigError>,
    ) {
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
