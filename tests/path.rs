//! Canonical paths: every spelling of `/admin` reaches the `/admin` route with the canonical path
//! the route was matched on, or is refused with 400 `BAD_PATH`; none lands on another route.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_error, get_with_host, Gateway, Upstream};

async fn setup() -> (Gateway, Upstream, Upstream) {
    let admin = Upstream::start("admin").await;
    let public = Upstream::start("public").await;
    let config = format!(
        r#"
[server]
allowed_hosts = ["localhost"]

[[upstream]]
name = "admin"
targets = ["{}"]

[[upstream]]
name = "public"
targets = ["{}"]

[[route]]
name = "admin"
path = "/admin"
upstream = "admin"
auth = "none"

[[route]]
name = "public"
path = "/"
upstream = "public"
auth = "none"
"#,
        admin.addr, public.addr
    );
    (Gateway::start(&config).await, admin, public)
}

#[tokio::test]
async fn every_spelling_of_admin_reaches_the_admin_route_with_the_canonical_path() {
    let (gw, admin, public) = setup().await;
    let cases = [
        ("/admin", "/admin"),
        ("//admin", "/admin"),
        ("///admin//users", "/admin/users"),
        ("/admin/./", "/admin/"),
        ("/%61dmin", "/admin"),
        ("/%61%64%6D%69%6E", "/admin"),
        ("/x/../admin", "/admin"),
        ("/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin/", "/admin/"),
        ("/../../admin?x=1", "/admin?x=1"),
        ("/admin/x/../../admin", "/admin"),
    ];
    for (sent, canonical) in cases {
        let resp = get_with_host(gw.addr, sent, "localhost").await;
        assert_eq!(resp.status, 200, "{sent}");
        let seen = resp.json();
        assert_eq!(seen["upstream"], "admin", "{sent} was routed elsewhere");
        assert_eq!(seen["target"], canonical, "{sent}");
    }
    assert_eq!(admin.hits(), cases.len());
    assert_eq!(public.hits(), 0);
}

#[tokio::test]
async fn ambiguous_paths_are_refused_before_any_upstream() {
    let (gw, admin, public) = setup().await;
    for sent in [
        "/admin%2f",
        "/admin%2Fusers",
        "/x%2f..%2fadmin",
        "/admin%5c",
        "/admin;x",
        "/..;/admin",
        "/admin;jsessionid=1",
        "/adm%3bin",
        "/admin%00",
        "/admin%0d%0aX-Injected:%201",
        "/admin%",
        "/admin%zz",
        "/admin\\",
        // Double encoding: a backend or second hop that decodes again would see /../admin.
        "/%252e%252e/admin",
        "/x/%252E%252E/admin",
        "/admin%252f",
        // Windows file-system aliases of /admin (NTFS streams, 8.3 short names).
        "/admin::$INDEX_ALLOCATION/x",
        "/admin:$i30:$INDEX_ALLOCATION/x",
        "/admin%3A%3A%24INDEX_ALLOCATION/x",
        "/ADMIN~1/x",
        "/adm%7E1",
    ] {
        let resp = get_with_host(gw.addr, sent, "localhost").await;
        assert_error(&resp, 400, "BAD_PATH");
    }
    assert_eq!(admin.hits() + public.hits(), 0);
}

#[tokio::test]
async fn spellings_a_lenient_backend_would_take_for_admin_are_refused() {
    let (gw, admin, public) = setup().await;
    // Case-insensitive backends (Express, ASP.NET) and suffix-stripping ones (Rails formats, IIS
    // trailing dots) would serve these as /admin, while exact matching would send them to "/".
    // IIS and NTFS also drop trailing dots and spaces from inner segments: /admin./secret.aspx is
    // served from /admin/.
    for sent in [
        "/ADMIN",
        "/Admin/users",
        "/%41DMIN",
        "/admin.json",
        "/admin.",
        "/admin%20",
        "/ADMIN.json",
        "/admin./secret.aspx",
        "/admin%20/x",
        "/admin.../x",
        "/Admin./x/y.json",
    ] {
        let resp = get_with_host(gw.addr, sent, "localhost").await;
        assert_error(&resp, 400, "BAD_PATH");
    }
    assert_eq!(admin.hits() + public.hits(), 0);
}

#[tokio::test]
async fn routes_are_segment_aware_and_unrelated_spellings_pass() {
    let (gw, admin, _public) = setup().await;
    for (sent, canonical, upstream) in [
        ("/adminx", "/adminx", "public"),
        ("/Public/Docs", "/Public/Docs", "public"),
        ("/report.json", "/report.json", "public"),
        ("/admin/Users", "/admin/Users", "admin"),
        ("/admin/export.json", "/admin/export.json", "admin"),
        ("/files.d/admin", "/files.d/admin", "public"),
        ("/~alice/notes", "/~alice/notes", "public"),
        ("/a%25/b", "/a%25/b", "public"),
    ] {
        let resp = get_with_host(gw.addr, sent, "localhost").await;
        assert_eq!(resp.status, 200, "{sent}");
        let seen = resp.json();
        assert_eq!(seen["upstream"], upstream, "{sent}");
        assert_eq!(seen["target"], canonical);
    }
    assert_eq!(admin.hits(), 2);
}

#[tokio::test]
async fn non_ascii_and_encoded_bytes_are_kept_encoded() {
    let (gw, _admin, public) = setup().await;
    let resp = get_with_host(gw.addr, "/caf%c3%a9/a%20b", "localhost").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["target"], "/caf%C3%A9/a%20b");
    assert_eq!(public.hits(), 1);
}
