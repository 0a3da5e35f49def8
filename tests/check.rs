//! `portcullis check`: valid configs print a summary and exit 0; each bad config exits 78 with
//! `FILE: KEY: problem; fix` naming the key.
#![allow(clippy::unwrap_used)]

mod common;

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

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    run_cli(&["check", "-c", file.to_str().unwrap()], None)
}

#[test]
fn every_shipped_config_passes_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], None);
            assert_eq!(code, 0, "{}: {err}", path.display());
            assert!(out.starts_with("configuration OK"), "{out}");
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected conf/gateway.toml and conf/gateway.example.toml");
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
        (BASE.replace("auth = \"none\"", "auth = \"none\"\npermissions = [\"read_models\"]"), "route[0].permissions", "auth = \"none\""),
        (BASE.replace("auth = \"none\"", "auth = \"required\"\npermissions = [\"a,b\"]"), "route[0].permissions[0]", "not a permission name"),
        (format!("{BASE}\n[auth]\napi_key_headers = [\"Authorization\"]\n"), "auth.api_key_headers[0]", "always read"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:abc\"\n"), "auth.api_key[0].hash", "64 hex digits"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\n"), "auth.api_key[0].hash", "missing"),
        (format!("{BASE}\n[[auth.api_key]]\nhash = \"sha256:{}\"\n", "a".repeat(64)), "auth.api_key[0].id", "missing"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:{}\"\nexpires = \"tomorrow\"\n", "a".repeat(64)), "auth.api_key[0].expires", "RFC 3339"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:{h}\"\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:{h}\"\n", h = "b".repeat(64)), "auth.api_key[1].id", "names two keys"),
        (format!("{BASE}\n[[auth.api_key]]\nid = \"k\"\nhash = \"sha256:{}\"\nsecret = \"x\"\n", "a".repeat(64)), "auth.api_key[0].secret", "unknown field"),
        (format!("{BASE}\n[[auth.jwt]]\nname = \"idp\"\n"), "auth.jwt[0]", "not supported yet"),
        (format!("{BASE}\n[cors]\nallowed_origins = [\"https://a.example\"]\n"), "cors", "not supported yet"),
        (
            format!("{BASE}\n[[rate_limit]]\nname = \"x\"\nkey = \"client\"\nlimit = \"1/second\"\n"),
            "rate_limit[0]",
            "not supported yet",
        ),
        (
            BASE.replace(
                "address = \"127.0.0.1:8080\"",
                "address = \"127.0.0.1:8080\"\n[listener.tls]\nmin_version = \"1.2\"",
            ),
            "listener[0].tls",
            "not supported yet",
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
    for (text, key, problem) in cases {
        let (code, out, err) = check(&text);
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
