//! Logging: tracing to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON.

use tracing_subscriber::{EnvFilter, fmt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // sled logs its I/O at debug and trace from epoch-deferred closures, which may run in an
    // exiting thread's TLS destructor; formatting an event there touches thread-locals already
    // gone and aborts the process. So sled is capped at info, whatever RUST_LOG says.
    let filter = filter.add_directive("sled=info".parse().expect("a valid directive"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
