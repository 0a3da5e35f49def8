//! Configuration errors: values, never panics, each naming the file, the key, what is wrong and
//! how to fix it.

use std::fmt;

use crate::redact::redact;

/// One problem found in the configuration.
///
/// Displayed as `FILE: KEY: what is wrong; how to fix it`, the format `portcullis check` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in (or the path given to `-c` when no single file holds it).
    pub file: String,
    /// The key path, e.g. `route[2].upstream`; empty when the problem is the file itself.
    pub key: String,
    /// What is wrong, naming the bad value where there is one.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A value in the wrong place may be a secret: messages are redacted like log lines.
        let (problem, fix) = (redact(&self.problem), redact(&self.fix));
        if self.key.is_empty() {
            write!(f, "{}: {problem}; {fix}", self.file)
        } else {
            write!(f, "{}: {}: {problem}; {fix}", self.file, self.key)
        }
    }
}

/// Every problem found in one load: operators fix them all in one round instead of one per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}
