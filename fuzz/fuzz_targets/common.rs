//! What the targets share: a validated runtime built from a configuration of their own.

use std::sync::Arc;

use portcullis::config::Runtime;

/// The runtime of a gateway on loopback in front of `builtin:echo`, with `rest` appended
/// (routes, `[cors]`, `[auth]`, ...) and, unless `rest` has routes, one route on `/`.
pub fn runtime(rest: &str) -> Arc<Runtime> {
    let route = if rest.contains("[[route]]") { "" } else { "[[route]]\npath = \"/\"\nupstream = \"api\"\n" };
    let text = format!(
        "[server]\nallowed_hosts = [\"localhost\", \"*.example.com\"]\n[[listener]]\naddress = \"127.0.0.1:8080\"\n\
         [[upstream]]\nname = \"api\"\ntargets = [\"builtin:echo\"]\n{route}{rest}\n"
    );
    portcullis::config::load_str(&text).expect("the fuzz configuration is valid").runtime
}
