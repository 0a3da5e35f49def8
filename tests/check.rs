//! `portcullis check`: valid configs print a summary and exit 0; each bad config exits 78 with
//! `FILE: KEY: problem; fix` naming the key.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{repo_root, run_cli};

const BASE: &str = r#"
[server]
allowed_hosts = ["localhost"]

[[listener]]
address = "127.0.0.1:8080"

[[upstream]]
name = "api"
targets = ["127.0.0.1:9000"]

[[route]]
name = "r"
path = "/"
upstream = "api"
auth = "none"
"#;

/// `BASE` with one `[[auth.jwt]]` issuer fetching RS256 keys from a URL, plus `extra` keys.
fn jwt(extra: &str) -> String {
    format!(
        "{BASE}\n[auth]\n[[auth.jwt]]\nname = \"idp\"\nissuer = \"https://idp.example.com/\"\naudiences = [\"registry\"]\n\
         algorithms = [\"RS256\"]\njwks_url = \"https://idp.example.com/jwks.json\"\n{extra}\n"
    )
}

/// `BASE` with an HS256 issuer whose key source is `source`.
fn hs_jwt(source: &str) -> String {
    format!(
        "{BASE}\n[[auth.jwt]]\nname = \"local\"\nissuer = \"local\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\n{source}\n"
    )
}

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    run_cli(&["check", "-c", file.to_str().unwrap()], None)
}

/// Users run the gateway on `conf/` as a directory (every `*.toml` there is loaded), and copy
/// from the annotated example: both must pass `check`, and so must each file on its own.
#[test]
fn every_shipped_config_passes_check() {
    let root = repo_root();
    let mut paths = vec![root.join("conf")];
    for dir in ["conf", "examples"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
    }
    for path in &paths {
        let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], None);
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(out.starts_with("configuration OK"), "{out}");
    }
    let names: Vec<String> = paths.iter().map(|p| p.strip_prefix(&root).unwrap().display().to_string()).collect();
    for expected in ["conf", "conf/gateway.toml", "examples/gateway.example.toml"] {
        assert!(names.iter().any(|n| n == expected), "{expected} was not checked: {names:?}");
    }
}

#[test]
fn summary_lists_listeners_upstreams_and_routes() {
    let (code, out, _) = check(BASE);
    assert_eq!(code, 0);
    for part in ["http://127.0.0.1:8080", "api -> 127.0.0.1:9000", "r ", "/ -> api (auth: none)"] {
        assert!(out.contains(part), "summary lacks {part:?}:\n{out}");
    }
}

#[test]
fn summary_shows_admin_logs_and_health_checks() {
    let (code, out, _) = check(BASE);
    assert_eq!(code, 0);
    assert!(out.contains("admin: off") && out.contains("logs: access off, audit off"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let observed = BASE.replace(
        "targets = [\"127.0.0.1:9000\"]",
        "targets = [\"127.0.0.1:9000\"]\nhealth_check = { path = \"/health\" }",
    ) + &format!("\n[admin]\n[log]\naccess = \"stdout\"\naudit = \"{}\"\n", audit.display());
    let (code, out, err) = check(&observed);
    assert_eq!(code, 0, "{err}");
    let logs = format!("logs: access stdout, audit {}", audit.display());
    for part in [
        "admin: http://127.0.0.1:9100 (/metrics, /healthz, /readyz)",
        logs.as_str(),
        "api -> 127.0.0.1:9000 (health check GET /health every 5s)",
    ] {
        assert!(out.contains(part), "summary lacks {part:?}:\n{out}");
    }
    // check opens nothing: the audit file was not created.
    assert!(!audit.exists());
}

/// `BASE` in production, its open route declared public.
fn production() -> String {
    BASE.replace("[server]\n", "[server]\nenvironment = \"production\"\n")
        .replace("auth = \"none\"\n", "auth = \"none\"\npublic = true\n")
}

/// Each unsafe setting is refused in production with its own message, and accepted in
/// development.
#[test]
fn production_refuses_unsafe_settings_one_by_one() {
    let production = production();
    let (code, out, err) = check(&production);
    assert_eq!(code, 0, "the base is production-safe: {err}{out}");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = |name: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let example = secret_file("example.secret", "your-256-bit-secret-change-me-0123456789", 0o600);
    let open = secret_file("open.secret", "kP9s7Qx2Lm4Vt8Rw1Zy6Nb3Hc5Jd0Fg-Ae7Ui", 0o644);
    let jwt = |path: &str| {
        format!("\n[[auth.jwt]]\nname = \"local\"\nissuer = \"local\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nsecret = \"file:{path}\"\n")
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (production.replace("127.0.0.1:8080", "0.0.0.0:8080"), "listener[0].address", "plain HTTP off loopback"),
        (format!("{production}\n[cors]\nallowed_origins = [\"*\"]\n"), "cors.allowed_origins", "every origin"),
        (production.replace("public = true\n", ""), "route[0].public", "open route must be declared"),
        (
            format!("{production}\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:{}\"\n", "a".repeat(64)),
            "auth.api_key[0].expires",
            "never expire",
        ),
        (format!("{production}{}", jwt(&example)), "auth.jwt[0].secret", "well-known example value"),
        (format!("{production}{}", jwt(&open)), "auth.jwt[0].secret", "readable by every user"),
        (
            format!("{production}\n[admin]\naddress = \"0.0.0.0:9100\"\n"),
            "admin.address",
            "neither loopback nor a private",
        ),
        (
            production.replace("[server]\n", "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\n"),
            "server.trusted_proxies[1]",
            "trusts every address",
        ),
        (
            production.replace("[server]\n", "[server]\ntrusted_proxies = [\"::/0\"]\n"),
            "server.trusted_proxies[0]",
            "trusts every address",
        ),
        (
            production.replace("[server]\n", "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"128.0.0.0/1\"]\n"),
            "server.trusted_proxies[1]",
            "trusts every address",
        ),
        (
            production.replace("[server]\n", "[server]\ntrusted_proxies = [\"fc00::/7\", \"2a00::/7\"]\n"),
            "server.trusted_proxies[1]",
            "trusts every address",
        ),
        (
            production
                .replace("[server]\n", "[server]\ntrusted_proxies = [\"2606:4700::/32\", \"::ffff:0.0.0.0/97\"]\n"),
            "server.trusted_proxies[1]",
            "trusts every address",
        ),
        (
            production.replace("targets = [\"127.0.0.1:9000\"]", "targets = [\"builtin:echo\"]"),
            "upstream[0].targets",
            "reflects every request",
        ),
    ];
    for (text, key, problem) in cases {
        let (code, _, err) = check(&text);
        assert_eq!(code, 78, "{key} was accepted in production");
        assert!(err.contains(&format!(": {key}: ")) && err.contains(problem), "{key}: {err}");
        assert_eq!(err.lines().filter(|l| l.contains("gateway.toml:")).count(), 1, "one error each: {err}");
        let development = text.replace("environment = \"production\"", "environment = \"development\"");
        let (code, _, err) = check(&development);
        assert_eq!(code, 0, "{key} is fine in development: {err}");
    }
    // Load balancers' ranges are fine: private ones, and public ones as wide as a provider's.
    let proxies = r#"trusted_proxies = ["10.0.0.0/8", "fc00::/7", "2a06:98c0::/29", "2600:9000::/28", "::ffff:10.0.0.0/104", "64:ff9b::a00:0/104"]"#;
    let (code, _, err) = check(&production.replace("[server]\n", &format!("[server]\n{proxies}\n")));
    assert_eq!(code, 0, "{err}");
    // Private admin addresses are fine.
    let (code, _, err) = check(&format!("{production}\n[admin]\naddress = \"10.0.0.5:9100\"\n"));
    assert_eq!(code, 0, "{err}");
}

/// What production refuses besides the table above: the `null` origin, a secret that is one
/// byte repeated, a TLS key others can read, and a configuration others can rewrite.
#[test]
fn production_refuses_null_origins_weak_secrets_and_files_others_can_touch() {
    use std::os::unix::fs::PermissionsExt;
    let production = production();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let refused = |text: &str, key: &str, problem: &str| {
        let (code, _, err) = check(text);
        assert_eq!(code, 78, "{key} was accepted in production");
        assert!(err.contains(&format!(": {key}: ")) && err.contains(problem), "{key}: {err}");
        let (code, _, err) = check(&text.replace("environment = \"production\"", "environment = \"development\""));
        assert_eq!(code, 0, "{key} is fine in development: {err}");
    };
    refused(
        &format!("{production}\n[cors]\nallowed_origins = [\"https://app.example.com\", \"null\"]\n"),
        "cors.allowed_origins",
        "\"null\" origin",
    );
    let repeated = write("repeated.secret", &"a".repeat(48), 0o600);
    refused(
        &format!(
            "{production}\n[[auth.jwt]]\nname = \"local\"\nissuer = \"local\"\naudiences = [\"api\"]\n\
             algorithms = [\"HS256\"]\nsecret = \"file:{}\"\n",
            repeated.display()
        ),
        "auth.jwt[0].secret",
        "placeholder",
    );
    // A TLS key readable by every user (the certificate may be).
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = write("site.pem", &params.self_signed(&key).unwrap().pem(), 0o644);
    let open_key = write("site.key", &key.serialize_pem(), 0o644);
    let tls = |key: &Path| {
        format!(
            "{production}\n[[listener]]\naddress = \"127.0.0.1:8443\"\n[listener.tls]\n[[listener.tls.certificate]]\n\
             cert = \"{}\"\nkey = \"file:{}\"\n",
            cert.display(),
            key.display()
        )
    };
    refused(&tls(&open_key), "listener[1].tls.certificate[0].key", "readable by every user");
    let closed_key = write("closed.key", &key.serialize_pem(), 0o600);
    let (code, _, err) = check(&tls(&closed_key));
    assert_eq!(code, 0, "a key only its owner reads is fine: {err}");
    // A configuration file every user may rewrite.
    let config = write("gateway.toml", &production, 0o666);
    let (code, _, err) = run_cli(&["check", "-c", config.to_str().unwrap()], None);
    assert_eq!(code, 78, "a world-writable config was accepted: {err}");
    assert!(err.contains("is writable by every user") && err.contains("chmod o-w"), "{err}");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run_cli(&["check", "-c", config.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn secrets_come_from_the_systemd_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt"), "kP9s7Qx2Lm4Vt8Rw1Zy6Nb3Hc5Jd0Fg-Ae7Ui-Zq").unwrap();
    let text = format!(
        "{BASE}\n[[auth.jwt]]\nname = \"local\"\nissuer = \"local\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nsecret = \"file:$CREDENTIALS_DIRECTORY/jwt\"\n"
    );
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, &text).unwrap();
    let run = |credentials: Option<&Path>| {
        let mut command = std::process::Command::new(common::BIN);
        command.args(["check", "-c", file.to_str().unwrap()]);
        match credentials {
            Some(d) => command.env("CREDENTIALS_DIRECTORY", d),
            None => command.env_remove("CREDENTIALS_DIRECTORY"),
        };
        command.output().unwrap()
    };
    let out = run(Some(dir.path()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(None);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.jwt[0].secret") && err.contains("CREDENTIALS_DIRECTORY"), "{err}");
}

#[test]
fn config_errors_never_echo_a_secret() {
    let key = "pcs_5e1f0a9c3b7d2e4f6a8b0c1d2e3f40516273849a5b6c7d8e9f0a1b2c3d4e5f6a";
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlZ21lbnQtMTIzNDU2Nzg5MA";
    // A key and a token pasted where other values were expected.
    let text =
        BASE.replace("[server]\n", &format!("[server]\nenvironment = \"{key}\"\ntrusted_proxies = [\"{jwt}\"]\n"));
    let (code, out, err) = check(&text);
    assert_eq!(code, 78, "{out}");
    assert!(err.contains("server.environment") && err.contains("server.trusted_proxies[0]"), "{err}");
    for secret in [&key[4..], jwt, "eyJzdWIiOiJ4In0"] {
        assert!(!err.contains(secret), "{secret} in {err}");
    }
    assert!(err.contains("[REDACTED]"), "{err}");
}

#[test]
fn version_and_default_subcommand() {
    let (code, out, _) = run_cli(&["--version"], None);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("portcullis {}", env!("CARGO_PKG_VERSION")));
    // Without -c, the default config path is used (here: from the repository root).
    let (code, out, err) = run_cli(&["check"], Some(&repo_root()));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("conf/gateway.toml"));
}

/// Each bad config: (what to change, the key the error must name, a word of the problem).
#[test]
fn each_bad_config_is_refused_naming_its_key() {
    let cases: Vec<(String, &str, &str)> = vec![
        (BASE.replace("allowed_hosts", "allowed_host"), "server.allowed_host", "unknown field"),
        (BASE.replace("[[route]]\nname", "[[route]]\nmethdos = [\"GET\"]\nname"), "route[0].methdos", "unknown field"),
        (BASE.replace("127.0.0.1:8080", "localhost:8080"), "listener[0].address", "not an IP:port"),
        (BASE.replace("127.0.0.1:8080", "127.0.0.1:99999"), "listener[0].address", "not an IP:port"),
        (format!("{BASE}\n[server]\n"), "", "duplicate key (line"),
        (BASE.replace("[server]\n", "[server]\nshutdown_grace = \"30\"\n"), "server.shutdown_grace", "no unit"),
        (
            BASE.replace("[server]\n", "[server]\nshutdown_grace = \"soon\"\n"),
            "server.shutdown_grace",
            "not a duration",
        ),
        (
            BASE.replace("[server]\n", "[server]\nmax_body_size = \"10 parsecs\"\n"),
            "server.max_body_size",
            "not a size",
        ),
        (
            BASE.replace("targets = [", "connect_timeout = \"-1s\"\ntargets = ["),
            "upstream[0].connect_timeout",
            "not a duration",
        ),
        (BASE.replace("allowed_hosts = [\"localhost\"]", "allowed_hosts = []"), "server.allowed_hosts", "empty"),
        (
            BASE.replace("allowed_hosts = [\"localhost\"]", "allowed_hosts = [\"api.*.com\"]"),
            "server.allowed_hosts[0]",
            "wildcard",
        ),
        (
            BASE.replace(
                "allowed_hosts = [\"localhost\"]",
                "trusted_proxies = [\"10.0.0.0/33\"]\nallowed_hosts = [\"x\"]",
            ),
            "server.trusted_proxies[0]",
            "not an IP network",
        ),
        (
            format!("{BASE}\n[[upstream]]\nname = \"api\"\ntargets = [\"127.0.0.1:1\"]\n"),
            "upstream[1].name",
            "names two upstreams",
        ),
        (BASE.replace("targets = [\"127.0.0.1:9000\"]", "targets = []"), "upstream[0].targets", "empty"),
        (
            BASE.replace("targets = [\"127.0.0.1:9000\"]", "targets = [\"builtin:echo\", \"127.0.0.1:1\"]"),
            "upstream[0].targets",
            "mixes",
        ),
        (
            BASE.replace("upstream = \"api\"", "upstream = \"apii\""),
            "route[0].upstream",
            "no [[upstream]] is named \"apii\"",
        ),
        (
            format!("{BASE}\n[[route]]\nname = \"r\"\npath = \"/x\"\nupstream = \"api\"\nauth = \"none\"\n"),
            "route[1].name",
            "names two routes",
        ),
        (
            format!("{BASE}\n[[route]]\nname = \"r2\"\npath = \"/\"\nupstream = \"api\"\nauth = \"none\"\n"),
            "route[1].path",
            "already serves",
        ),
        (BASE.replace("path = \"/\"", "path = \"/api/\""), "route[0].path", "not canonical"),
        (BASE.replace("path = \"/\"", "path = \"/a/../b\""), "route[0].path", "not canonical"),
        (BASE.replace("path = \"/\"", "path = \"/a;b\""), "route[0].path", "not a valid path"),
        (BASE.replace("[[route]]\n", "[[route]]\nmethods = [\"get\"]\n"), "route[0].methods[0]", "not upper case"),
        (
            BASE.replace("[[route]]\n", "[[route]]\nhost = \"other.com\"\n"),
            "route[0].host",
            "not in server.allowed_hosts",
        ),
        (BASE.replace("auth = \"none\"", "auth = \"maybe\""), "route[0].auth", "not an auth mode"),
        (format!("{BASE}\n[admin]\naddress = \"127.0.0.1:8080\"\n"), "admin.address", "overlaps the public listener"),
        (format!("{BASE}\n[admin]\naddress = \"0.0.0.0:8080\"\n"), "admin.address", "overlaps the public listener"),
        (format!("{BASE}\n[admin]\naddress = \"localhost:9100\"\n"), "admin.address", "not an IP:port"),
        (format!("{BASE}\n[log]\naudit = \"/nonexistent-dir/audit.jsonl\"\n"), "log.audit", "does not exist"),
        (format!("{BASE}\n[log]\naccess = \"/tmp\"\n"), "log.access", "is a directory"),
        (format!("{BASE}\n[log]\naccess = \"a.jsonl\"\naudit = \"a.jsonl\"\n"), "log.audit", "same file"),
        (
            BASE.replace("targets = [\"127.0.0.1:9000\"]", "targets = [\"127.0.0.1:9000\"]\nhealth_check = { interval = \"5s\" }"),
            "upstream[0].health_check.path",
            "missing",
        ),
        (
            BASE.replace("targets = [\"127.0.0.1:9000\"]", "targets = [\"127.0.0.1:9000\"]\nhealth_check = { path = \"health\" }"),
            "upstream[0].health_check.path",
            "not an absolute path",
        ),
        (
            BASE.replace(
                "targets = [\"127.0.0.1:9000\"]",
                "targets = [\"127.0.0.1:9000\"]\nhealth_check = { path = \"/h\", unhealthy_threshold = 0 }",
            ),
            "upstream[0].health_check.unhealthy_threshold",
            "is 0",
        ),
        (
            BASE.replace("targets = [\"127.0.0.1:9000\"]", "targets = [\"builtin:echo\"]\nhealth_check = { path = \"/h\" }"),
            "upstream[0].health_check",
            "nothing to check",
        ),
        (BASE.replace("auth = \"none\"", "auth = \"none\"\npermissions = [\"read_models\"]"), "route[0].permissions", "auth = \"none\""),
        (BASE.replace("auth = \"none\"", "auth = \"required\"\npermissions = [\"a,b\"]"), "route[0].permissions[0]", "not a permission name"),
        (format!("{BASE}\n[auth]\napi_key_headers = [\"Authorization\"]\n"), "auth.api_key_headers[0]", "always read"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:abc\"\n"), "auth.api_key[0].hash", "64 hex digits"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\n"), "auth.api_key[0].hash", "missing"),
        (format!("{BASE}\n[[auth.api_key]]\nhash = \"sha256:{}\"\n", "a".repeat(64)), "auth.api_key[0].id", "missing"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:{}\"\nexpires = \"tomorrow\"\n", "a".repeat(64)), "auth.api_key[0].expires", "RFC 3339"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:{h}\"\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:{h}\"\n", h = "b".repeat(64)), "auth.api_key[1].id", "names two keys"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:{}\"\nsecret = \"x\"\n", "a".repeat(64)), "auth.api_key[0].secret", "unknown field"),
        (jwt("").replace("[\"RS256\"]", "[\"none\"]"), "auth.jwt[0].algorithms[0]", "never accepted"),
        (jwt("").replace("[\"RS256\"]", "[\"RS1\"]"), "auth.jwt[0].algorithms[0]", "not a JWT signature algorithm"),
        (jwt("").replace("[\"RS256\"]", "[]"), "auth.jwt[0].algorithms", "empty"),
        (jwt("").replace("[\"registry\"]", "[]"), "auth.jwt[0].audiences", "other APIs"),
        (jwt("jwks_file = \"conf/jwks.json\""), "auth.jwt[0].jwks_url", "2 key sources"),
        (jwt("").replace("jwks_url = \"https://idp.example.com/jwks.json\"\n", ""), "auth.jwt[0].jwks_url", "has no key"),
        (
            jwt("").replace("https://idp.example.com/jwks.json", "http://idp.example.com/jwks.json"),
            "auth.jwt[0].jwks_url",
            "plain http",
        ),
        (
            jwt("").replace("https://idp.example.com/jwks.json", "https://user:pw@idp.example.com/jwks.json"),
            "auth.jwt[0].jwks_url",
            "credentials",
        ),
        (jwt("").replace("\"RS256\"", "\"HS256\""), "auth.jwt[0].algorithms", "never serves HMAC"),
        (jwt("leeway = \"1h\""), "auth.jwt[0].leeway", "more than 5m"),
        (jwt("jwks_min_refresh_interval = \"10m\""), "auth.jwt[0].jwks_min_refresh_interval", "longer than"),
        (jwt("jwks_fetch_timeout = \"0s\""), "auth.jwt[0].jwks_fetch_timeout", "zero"),
        (jwt("jwks_fetch_timeout = \"1m\""), "auth.jwt[0].jwks_fetch_timeout", "more than 30s"),
        (jwt("jwks_refresh_interval = \"30days\""), "auth.jwt[0].jwks_refresh_interval", "more than 1day"),
        (
            jwt("claims_to_headers = { email = \"X-User-Email\" }"),
            "auth.jwt[0].claims_to_headers.email",
            "does not start with X-Auth-",
        ),
        (
            jwt("claims_to_headers = { email = \"X-Auth-Subject\" }"),
            "auth.jwt[0].claims_to_headers.email",
            "set by the gateway",
        ),
        (jwt("").replace("name = \"idp\"\n", ""), "auth.jwt[0].name", "missing"),
        (
            jwt("[[auth.jwt]]\nname = \"idp\"\nissuer = \"b\"\naudiences = [\"b\"]\nalgorithms = [\"ES256\"]\njwks_url = \"https://b/\""),
            "auth.jwt[1].name",
            "two issuers",
        ),
        (
            hs_jwt("secret = \"literal-secret-in-the-config-file-0123456789\""),
            "auth.jwt[0].secret",
            "env:NAME",
        ),
        (hs_jwt("secret = \"env:PORTCULLIS_TEST_UNSET_VARIABLE\""), "auth.jwt[0].secret", "is not set"),
        (hs_jwt("secret = \"file:/nonexistent/secret\""), "auth.jwt[0].secret", "cannot read"),
        (
            hs_jwt("public_key_file = \"Cargo.toml\""),
            "auth.jwt[0].public_key_file",
            "no RSA, EC or Ed25519 public key",
        ),
        (
            hs_jwt("jwks_file = \"Cargo.toml\""),
            "auth.jwt[0].jwks_file",
            "not a JWKS document",
        ),
        (jwt("required_typ = \"\""), "auth.jwt[0].required_typ", "not a JOSE typ value"),
        (jwt("required_typ = \"at jwt\""), "auth.jwt[0].required_typ", "not a JOSE typ value"),
        (
            jwt("").replace("auth = \"none\"", "auth = \"required\"\ncredentials = [\"jwt:partner\"]"),
            "route[0].credentials[0]",
            "no [[auth.jwt]] is named \"partner\"",
        ),
        (
            BASE.replace("auth = \"none\"", "auth = \"required\"\ncredentials = [\"password\"]"),
            "route[0].credentials[0]",
            "not a kind of credential",
        ),
        (
            BASE.replace("auth = \"none\"", "auth = \"required\"\ncredentials = [\"api_key\", \"api_key\"]"),
            "route[0].credentials[1]",
            "listed twice",
        ),
        (BASE.replace("auth = \"none\"", "auth = \"required\"\ncredentials = []"), "route[0].credentials", "empty"),
        (BASE.replace("auth = \"none\"", "auth = \"none\"\ncredentials = [\"api_key\"]"), "route[0].credentials", "auth = \"none\""),
        (
            BASE.replace("auth = \"none\"", "auth = \"required\"\ncredentials = [\"mtls\"]"),
            "route[0].credentials[0]",
            "no [listener.tls] has client_ca",
        ),
        (
            jwt("").replace("auth = \"none\"", "auth = \"required\"\ncredentials = [\"jwt\", \"jwt:idp\"]"),
            "route[0].credentials",
            "together",
        ),
        (format!("{BASE}\n[cors]\nallowed_origins = [\"https://a.example/\"]\n"), "cors.allowed_origins[0]", "has a path"),
        (
            format!("{BASE}\n[[rate_limit]]\nname = \"x\"\nkey = \"client\"\nlimit = \"1/sec\"\n"),
            "rate_limit[0].limit",
            "is not a rate",
        ),
        (
            BASE.replace(
                "address = \"127.0.0.1:8080\"",
                "address = \"127.0.0.1:8080\"\n[listener.tls]\nmin_version = \"1.2\"",
            ),
            "listener[0].tls.certificate",
            "no [[listener.tls.certificate]]",
        ),
        (
            BASE.replace("address = \"127.0.0.1:8080\"", "address = \"127.0.0.1:8080\"\nredirect_https = true"),
            "listener[0].redirect_https",
            "has a [listener.tls]",
        ),
        (
            BASE.replace("[server]\n", "[server]\nenvironment = \"staging\"\n"),
            "server.environment",
            "not an environment",
        ),
        (BASE.replace("[server]\n", "[server]\nrequest_id_header = \"Host\"\n"), "server.request_id_header", "gateway sets"),
        (
            format!("{}\n[auth]\napi_key_headers = [\"X-Token\"]\n", BASE.replace("[server]\n", "[server]\nrequest_id_header = \"X-Token\"\n")),
            "server.request_id_header",
            "also an API-key header",
        ),
        (
            BASE.replace("[server]\n", "[server]\nrequest_id_header = \"X-Forwarded-For\"\n"),
            "server.request_id_header",
            "gateway sets",
        ),
        (
            BASE.replace("allowed_hosts = [\"localhost\"]", "allowed_hosts = [\"*\"]").replace("[[route]]\n", "[[route]]\nhost = \"*\"\n"),
            "route[0].host",
            "shadow",
        ),
        ("[server\nx = 1".to_string(), "", "TOML"),
    ];
    // In-process: the binary's `check` prints exactly these errors (see below), so each rule is
    // tested without starting a process.
    for (text, key, problem) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, text).unwrap();
        let Err(errors) = portcullis::config::load(&file) else { panic!("expected refusal for key {key}") };
        let err = errors.to_string();
        assert!(err.contains("gateway.toml: "), "the error names the file: {err}");
        assert!(err.contains(&format!(": {key}")), "expected key {key:?} in: {err}");
        assert!(err.to_lowercase().contains(&problem.to_lowercase()), "expected {problem:?} in: {err}");
    }
    // The binary: exit 78, the same lines on stderr, nothing on stdout; for a file that is not
    // TOML, one whose shape is wrong, and one whose values are.
    for i in [cases.len() - 1, 0, 2] {
        let (text, key, problem) = &cases[i];
        let (code, out, err) = check(text);
        assert_eq!(code, 78, "expected refusal for key {key}, got stdout {out}");
        assert!(err.contains("gateway.toml: "), "the error names the file: {err}");
        assert!(err.contains(&format!(": {key}")), "expected key {key:?} in: {err}");
        assert!(err.to_lowercase().contains(&problem.to_lowercase()), "expected {problem:?} in: {err}");
        assert!(out.is_empty(), "nothing on stdout for a bad config: {out}");
    }
}

#[test]
fn missing_file_is_refused() {
    let (code, _, err) = run_cli(&["check", "-c", "/nonexistent/portcullis.toml"], None);
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/portcullis.toml: cannot be read"), "{err}");
}

#[test]
fn a_directory_is_loaded_in_name_order_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00-base.toml"), BASE).unwrap();
    std::fs::write(dir.path().join("README.md"), "not config").unwrap();
    let routes = "[[route]]\nname = \"two\"\npath = \"/two\"\nupstream = \"api\"\nauth = \"none\"\n";
    std::fs::write(dir.path().join("10-routes.toml"), routes).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", dir.path().to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/two -> api"), "{out}");

    // A bad route in the second file is reported against that file, with its in-file index.
    std::fs::write(dir.path().join("10-routes.toml"), routes.replace("\"api\"", "\"nope\"")).unwrap();
    let (code, _, err) = run_cli(&["check", "-c", dir.path().to_str().unwrap()], None);
    assert_eq!(code, 78);
    assert!(err.contains("10-routes.toml: route[0].upstream: no [[upstream]] is named \"nope\""), "{err}");

    // A key set in two files is an error naming both.
    std::fs::write(dir.path().join("10-routes.toml"), "[server]\nallowed_hosts = [\"x\"]\n").unwrap();
    let (code, _, err) = run_cli(&["check", "-c", dir.path().to_str().unwrap()], None);
    assert_eq!(code, 78);
    assert!(
        err.contains("10-routes.toml: server.allowed_hosts: is also set in") && err.contains("00-base.toml"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(&["check", "-c", empty.path().to_str().unwrap()], None);
    assert_eq!(code, 78);
    assert!(err.contains("holds no *.toml file"), "{err}");
}

#[test]
fn run_refuses_to_start_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, BASE.replace("upstream = \"api\"", "upstream = \"apii\"")).unwrap();
    let (code, _, err) = run_cli(&["run", "-c", file.to_str().unwrap()], None);
    assert_eq!(code, 78);
    assert!(err.contains("route[0].upstream"), "{err}");
}

#[test]
fn explain_shows_the_route_and_what_it_requires_without_starting() {
    let config = format!(
        "{}{}",
        BASE.replace("name = \"r\"\npath = \"/\"", "name = \"r\"\npath = \"/public\""),
        "\n[[route]]\nname = \"train\"\npath = \"/api/v1/train\"\nmethods = [\"POST\"]\nupstream = \"api\"\npermissions = [\"write_models\"]\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config).unwrap();
    let explain = |method: &str, url: &str| run_cli(&["explain", "-c", file.to_str().unwrap(), method, url], None);

    let (code, out, _) = explain("POST", "http://localhost:8080/api/v1/./train?x=1");
    assert_eq!(code, 0, "{out}");
    for line in [
        "host:        localhost (allowed)",
        "path:        /api/v1/train (canonical form)",
        "route:       train (path /api/v1/train)",
        "upstream:    api -> 127.0.0.1:9000",
        "auth:        required: API keys (x-api-key, Authorization: Bearer)",
        "permissions: write_models",
        "outcome:     forwarded once the credentials check out and hold the permissions",
    ] {
        assert!(out.contains(line), "explain lacks {line:?}:\n{out}");
    }
    let (code, out, _) = explain("GET", "http://localhost/public/x");
    assert_eq!(code, 0);
    assert!(out.contains("auth:        none") && out.contains("no credentials needed"), "{out}");

    // Refusals, whatever the credentials: exit 1 and the error the client would get.
    for (method, url, refusal) in [
        ("GET", "http://localhost/api/v1/train", "405 METHOD_NOT_ALLOWED"),
        ("POST", "http://localhost/api/v1/%2e%2e/%2e%2e/admin", "404 ROUTE_NOT_FOUND"),
        ("POST", "http://localhost/api/v1/train%2fx", "400 BAD_PATH"),
        ("POST", "http://evil-localhost/api/v1/train", "421 HOST_NOT_ALLOWED"),
    ] {
        let (code, out, _) = explain(method, url);
        assert_eq!(code, 1, "{method} {url}: {out}");
        assert!(out.contains(&format!("outcome:     refused, {refusal}")), "{url}: {out}");
    }
    // Unreadable arguments: exit 2, on stderr.
    let (code, out, err) = explain("GET", "/relative");
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("not an absolute URL"), "{err}");
}

const EXPLAINED: &str = r#"
[server]
allowed_hosts = ["localhost"]

[cors]
allowed_origins = ["http://localhost:3000"]

[[upstream]]
name = "api"
targets = ["builtin:echo"]

[[auth.api_key]]
id = "ci"
hash = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
permissions = ["write_models"]

[[route]]
name = "train"
path = "/api/v1/train"
methods = ["POST"]
upstream = "api"
permissions = ["write_models"]
credentials = ["api_key"]

[[route]]
name = "own-cors"
path = "/own"
upstream = "api"
auth = "none"
cors = false
"#;

/// `explain` takes curl's `-H`, says what each header changes, verifies a credential without
/// printing it, and explains preflights.
#[test]
fn explain_takes_headers_as_curl_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, format!("{EXPLAINED}\n[[listener]]\naddress = \"127.0.0.1:8080\"\n")).unwrap();
    let explain = |args: &[&str]| {
        let mut all = vec!["explain", "-c", file.to_str().unwrap()];
        all.extend_from_slice(args);
        run_cli(&all, None)
    };
    let preflight = ["-H", "Origin: http://localhost:3000", "-H", "Access-Control-Request-Method: POST"];
    let (code, out, err) = explain(&[&["OPTIONS", "http://localhost/api/v1/train"][..], &preflight].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("which governs this CORS preflight") && out.contains("answered by the gateway: 204"), "{out}");
    let (code, out, _) = explain(&[
        "OPTIONS",
        "http://localhost/api/v1/train",
        "-H",
        "Origin: https://evil.example",
        "-H",
        "Access-Control-Request-Method: POST",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("refused, 403 CORS_REJECTED"), "{out}");

    // The secret key ("secret") is verified and never printed; forged headers are named.
    let (code, out, _) = explain(&[
        "POST",
        "http://localhost/api/v1/train",
        "-H",
        "X-API-Key: secret",
        "-H",
        "X-Auth-Subject: root",
        "-H",
        "X-HTTP-Method-Override: DELETE",
        "-H",
        "Origin: http://localhost:3000",
    ]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "header:      x-api-key: a credential",
        "header:      x-auth-subject: removed: only the gateway sets X-Auth-* identity headers",
        "header:      x-http-method-override: removed",
        "Access-Control-Allow-Origin: http://localhost:3000",
        "credentials: only api_key",
        "credential:  an API key \"ci\", verified",
        "outcome:     forwarded",
    ] {
        assert!(out.contains(line), "explain lacks {line:?}:\n{out}");
    }
    assert!(!out.contains("secret"), "{out}");
    let (code, out, _) = explain(&["POST", "http://localhost/api/v1/train", "-H", "X-API-Key: wrong-key"]);
    assert_eq!(code, 1);
    assert!(out.contains("(unknown_key)") && out.contains("refused, 401 AUTHENTICATION_FAILED"), "{out}");
    assert!(!out.contains("wrong-key"));
    // An unreadable header is an argument error.
    let (code, _, err) = explain(&["GET", "http://localhost/", "-H", "no colon"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not \"Name: value\""), "{err}");
    // Nor does a malformed one echo what may be a secret.
    let (code, _, err) =
        explain(&["GET", "http://localhost/", "-H", "Authorization Bearer pcs_secret-in-a-bad-header"]);
    assert_eq!(code, 2);
    assert!(!err.contains("pcs_secret"), "{err}");
    let (code, _, err) = explain(&["GET", "http://localhost/", "-H", "X Api Key: pcs_secret-in-a-bad-name"]);
    assert_eq!(code, 2);
    assert!(!err.contains("pcs_secret"), "{err}");
    let (_, out, _) = explain(&["GET", "http://localhost/own?token=pcs_secret-in-the-query"]);
    assert!(!out.contains("pcs_secret"), "{out}");
    let (_, out, _) = explain(&["GET", "http://localhost/own?a=1;sig=pcs_secret-after-a-semicolon"]);
    assert!(!out.contains("pcs_secret"), "{out}");
    // Nor the URL's user:password, nor its query when it cannot be used.
    for url in [
        "http://user:pcs_secret-password@localhost/own",
        "http://user:pcs_secret-password@local host/own",
        "http://user:pcs_secret#pass@localhost/own",
        "http://user:pcs_secret/pass@localhost/own",
        "http://local host/own?token=pcs_secret-in-the-query",
        "localhost/own?token=pcs_secret-in-the-query",
    ] {
        let (code, out, err) = explain(&["GET", url]);
        assert_eq!(code, 2, "{url}: {out}");
        assert!(!err.contains("pcs_secret") && !out.contains("pcs_secret"), "{url}: {err}");
    }
    // An @ in the path is no password.
    let (_, out, err) = explain(&["GET", "http://localhost/own/@me"]);
    assert!(out.contains("request:     GET http://localhost/own/@me"), "{out}{err}");
}

/// What `explain` says about a preflight is what the gateway does with it: both call the same
/// routing function.
#[tokio::test]
async fn explain_and_the_gateway_agree_on_preflights() {
    let gw = common::Gateway::start(EXPLAINED).await;
    let file = gw.config_path();
    let cases = [
        ("/api/v1/train", "http://localhost:3000", "POST", 204),
        ("/api/v1/train", "http://localhost:3000", "DELETE", 403),
        ("/api/v1/train", "https://evil.example", "POST", 403),
        // CORS left to the upstream: an ordinary OPTIONS request, forwarded.
        ("/own", "http://localhost:3000", "POST", 200),
    ];
    for (path, origin, asked, status) in cases {
        let origin_header = format!("Origin: {origin}");
        let asked_header = format!("Access-Control-Request-Method: {asked}");
        let url = format!("http://localhost{path}");
        let (code, out, _) = run_cli(
            &["explain", "-c", file.to_str().unwrap(), "OPTIONS", &url, "-H", &origin_header, "-H", &asked_header],
            None,
        );
        let resp =
            common::send(gw.addr, "OPTIONS", path, &[("Origin", origin), ("Access-Control-Request-Method", asked)])
                .await;
        assert_eq!(resp.status, status, "{path} {origin} {asked}");
        let said = match status {
            204 => "answered by the gateway: 204",
            403 => "refused, 403 CORS_REJECTED",
            _ => "outcome:     forwarded",
        };
        assert!(out.contains(said), "{path} {origin} {asked}: explain said\n{out}");
        assert_eq!(code == 0, status != 403, "{out}");
    }
}
