//! Host (authority) parsing and host patterns on arbitrary bytes.
//!
//! Properties: a parsed host is lower case, has no port and no trailing dot, and parses to
//! itself; `*.example.com` matches only names ending in `.example.com` with a label before it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::pipeline::host::{parse_authority, HostPattern};

fuzz_target!(|data: &[u8]| {
    let Some(host) = parse_authority(data) else { return };
    let name = host.as_str();
    assert!(!name.is_empty());
    assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
    assert!(!name.ends_with('.'), "{name:?}");
    if !name.starts_with('[') {
        assert!(!name.contains(':'), "a port survived: {name:?}");
    }
    let again = parse_authority(name.as_bytes()).expect("a parsed host parses again");
    assert_eq!(again.as_str(), name);
    let wildcard = HostPattern::parse("*.example.com").expect("valid pattern");
    if wildcard.matches(name) {
        let label = name.strip_suffix(".example.com").expect("ends with the suffix");
        assert!(!label.is_empty() && !label.ends_with('.'), "{name:?}");
    }
    if let Ok(pattern) = HostPattern::parse(name) {
        assert!(pattern.matches(name), "{name:?} does not match itself");
    }
});
