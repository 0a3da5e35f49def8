//! Secrets by reference: `env:NAME` or `file:PATH` (systemd's `$CREDENTIALS_DIRECTORY` too), so
//! no secret sits in the configuration itself.

/// `env:NAME` or `file:PATH`: secrets never sit in the config itself.
pub fn read_secret(spec: &str) -> Result<Vec<u8>, (String, &'static str)> {
    if let Some(name) = spec.strip_prefix("env:") {
        return match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(v.into_bytes()),
            _ => Err((format!("environment variable {name} is not set"), "export it to the gateway's environment")),
        };
    }
    if let Some(path) = spec.strip_prefix("file:") {
        let path = secret_path(path).map_err(|e| (e, "run under systemd with LoadCredential=, or give a path"))?;
        let mut bytes = std::fs::read(&path).map_err(|e| {
            (format!("cannot read {}: {e}", path.display()), "point it at a readable file holding the secret")
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        return Ok(bytes);
    }
    Err((
        "is not \"env:NAME\" or \"file:PATH\"".into(),
        "keep the secret out of the config: secret = \"env:JWT_SECRET\" or \"file:/run/secrets/jwt\"",
    ))
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
