//! Logging: tracing to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON; and for
//! `serve`, spans exported by OTLP when the standard `OTEL_EXPORTER_OTLP_*` variables ask for it
//! (`otel.rs`).

mod otel;

use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{FilterExt, filter_fn},
    fmt,
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub use self::otel::{Traces, set_remote_parent};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The name of the span around each gRPC call (`grpc::layer`).
pub const CALL_SPAN: &str = "grpc";

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn log_layer(format: LogFormat) -> BoxedLayer {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // sled logs its I/O at debug and trace from epoch-deferred closures, which may run in an
    // exiting thread's TLS destructor; formatting an event there touches thread-locals already
    // gone and aborts the process. So sled is capped at info, whatever RUST_LOG says.
    let filter = filter.add_directive("sled=info".parse().expect("a valid directive"));
    // The per-call `grpc` span is for traces: the log lines inside it name what they are about.
    // Left to the log layer, it formatted every call's span fields (a few % of a verification's
    // CPU) for log lines that verifications never write.
    let filter = filter.and(filter_fn(|meta| !(meta.is_span() && meta.name() == CALL_SPAN)));
    let layer = fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer.json().flatten_event(true).with_filter(filter).boxed(),
    }
}

fn install(layers: Vec<BoxedLayer>) {
    let _ = tracing_subscriber::registry().with(layers).try_init();
}

/// Logging only.
pub fn init(format: LogFormat) {
    install(vec![log_layer(format)]);
}

/// Logging, and traces when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.
/// Call inside the Tokio runtime (the exporter's gRPC channel lives there), and shut the returned
/// `Traces` down before the runtime stops.
pub fn init_serving(format: LogFormat) -> Result<Option<Traces>, String> {
    let mut layers = vec![log_layer(format)];
    let traces = match otel::from_env()? {
        Some((traces, layer)) => {
            layers.push(layer);
            Some(traces)
        }
        None => None,
    };
    install(layers);
    if traces.is_some() {
        tracing::info!("exporting traces by OTLP");
    }
    Ok(traces)
}
