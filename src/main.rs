//! The `portcullis` binary: parse the command line, load the configuration, run or check.

use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{self, Cli, Command, KeysCommand};

/// mimalloc: the proxy allocates and frees many small buffers per request across threads,
/// which glibc's allocator serves with more locking (measured with bench/run.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// OpenSSL allocates through mimalloc too: glibc's allocator kept what TLS connections freed
/// (170 MiB still held after 3,000 stalled handshakes were closed, `bench/slow-clients.sh`),
/// where mimalloc hands it back. Must run before OpenSSL's first allocation; `false` if too late.
#[allow(unsafe_code)] // FFI: neither openssl-sys nor mimalloc wraps this
fn openssl_allocates_with_mimalloc() -> bool {
    use std::ffi::{c_char, c_int, c_void};
    unsafe extern "C" {
        // OpenSSL 1.1 and 3: int CRYPTO_set_mem_functions(malloc_fn, realloc_fn, free_fn).
        fn CRYPTO_set_mem_functions(
            m: unsafe extern "C" fn(usize, *const c_char, c_int) -> *mut c_void,
            r: unsafe extern "C" fn(*mut c_void, usize, *const c_char, c_int) -> *mut c_void,
            f: unsafe extern "C" fn(*mut c_void, *const c_char, c_int),
        ) -> c_int;
    }
    unsafe extern "C" fn malloc(size: usize, _: *const c_char, _: c_int) -> *mut c_void {
        // SAFETY: mimalloc's malloc, for any size.
        unsafe { libmimalloc_sys::mi_malloc(size) }
    }
    unsafe extern "C" fn realloc(p: *mut c_void, size: usize, _: *const c_char, _: c_int) -> *mut c_void {
        // SAFETY: `p` is null or from `malloc`/`realloc` above (OpenSSL frees only its own).
        unsafe { libmimalloc_sys::mi_realloc(p, size) }
    }
    unsafe extern "C" fn free(p: *mut c_void, _: *const c_char, _: c_int) {
        // SAFETY: as for `realloc`.
        unsafe { libmimalloc_sys::mi_free(p) }
    }
    // SAFETY: the three functions are a consistent allocator, set before OpenSSL allocated.
    unsafe { CRYPTO_set_mem_functions(malloc, realloc, free) == 1 }
}

fn main() -> ExitCode {
    // First: OpenSSL refuses new functions once it has allocated.
    let openssl_on_mimalloc = openssl_allocates_with_mimalloc();
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Run { .. }) | None) {
        // Before anything slow: a SIGHUP (a reload asked too early) must not stop the gateway.
        portcullis::reload::catch_hangups_early();
    }
    let load = || {
        portcullis::config::load(&cli.config).map_err(|errors| {
            eprintln!("{errors}");
            eprintln!("portcullis: the configuration has {} error(s); nothing was started", errors.0.len());
            ExitCode::from(cli::EXIT_CONFIG)
        })
    };
    match &cli.command {
        Some(Command::Keys(keys)) => run_keys(keys),
        Some(Command::Check) => match load() {
            Ok(config) => {
                print!("{}", cli::summary(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Explain { method, url, headers }) => match load() {
            Ok(config) => match cli::explain(&config, method, url, headers) {
                Ok((out, routed)) => {
                    print!("{out}");
                    if routed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("portcullis explain: {e}");
                    ExitCode::from(2)
                }
            },
            Err(code) => code,
        },
        Some(Command::Run { .. }) | None => {
            let upgrade = matches!(cli.command, Some(Command::Run { upgrade: true }));
            match load() {
                Ok(config) => {
                    init_logging(&config.process.log_level);
                    if !openssl_on_mimalloc {
                        tracing::warn!("OpenSSL allocates with the system allocator: memory TLS connections freed may not be returned");
                    }
                    match portcullis::run(config, &cli.config, upgrade) {
                        // Pingora's runtimes are done with; what is left of them is not waited for.
                        Ok(()) => std::process::exit(0),
                        Err(error) => {
                            eprintln!("portcullis: {error}");
                            match error {
                                portcullis::StartError::Logs(_) => ExitCode::from(cli::EXIT_CONFIG),
                                portcullis::StartError::Listener(_) | portcullis::StartError::Crashed => {
                                    ExitCode::from(1)
                                }
                            }
                        }
                    }
                }
                Err(code) => code,
            }
        }
        Some(Command::Health { url }) => match cli::health(url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis health: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// `portcullis keys ...`: needs no configuration.
fn run_keys(command: &KeysCommand) -> ExitCode {
    match command {
        KeysCommand::Generate { id, permissions, expires_in } => {
            match cli::generate_key(id, permissions, expires_in.as_deref()) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis keys generate: {e}");
                    ExitCode::from(2)
                }
            }
        }
        KeysCommand::Hash => {
            let mut key = String::new();
            if std::io::stdin().read_line(&mut key).is_err() || key.trim_end_matches(['\r', '\n']).is_empty() {
                eprintln!("portcullis keys hash: give the key on standard input");
                return ExitCode::from(2);
            }
            let key = key.trim_end_matches(['\r', '\n']);
            println!("hash = \"{}\"", portcullis::pipeline::auth::apikey::hash_line(key));
            ExitCode::SUCCESS
        }
    }
}

/// Structured (JSON lines) logs on stderr, every line redacted; `RUST_LOG` overrides
/// `[log] level`. Pingora's own `log` records arrive here too, those any client can cause
/// held to one a second ([`portcullis::logs::client_caused`]).
fn init_logging(level: &str) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let levels = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let lines = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(|| RedactedStderr)
        .with_filter(levels.and(portcullis::logs::client_caused::ClientCaused));
    tracing_subscriber::registry().with(lines).init();
}

/// Stderr through [`portcullis::redact::redact`]. The formatter writes each event with one
/// `write_all`, so each call holds whole lines.
struct RedactedStderr;

impl std::io::Write for RedactedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(portcullis::redact::redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
