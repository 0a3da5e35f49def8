//! Configuration loading on arbitrary TOML.
//!
//! Properties: no input panics; a configuration that loads has canonical route paths, at least
//! one listener and route, and a summary that prints.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::pipeline::path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match portcullis::config::load_str(text) {
        Ok(config) => {
            assert!(!config.process.listeners.is_empty());
            let routes = config.runtime.routes.routes();
            assert!(!routes.is_empty());
            for route in routes {
                assert_eq!(path::normalize(&route.path).as_deref(), Ok(&*route.path), "{:?}", route.path);
            }
            let _ = portcullis::cli::summary(&config);
        }
        Err(errors) => {
            for error in &errors.0 {
                assert!(!error.problem.is_empty() && !error.fix.is_empty(), "{error:?}");
            }
        }
    }
});
