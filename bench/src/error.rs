//! `BenchError`: why a bench could not run or measure. A MISS against a goal is a figure, not an
//! error; these stop the command (exit 1). None carries a key: keys stay in the bench's memory.

use std::{path::PathBuf, process::ExitStatus};

use keyward::{
    app::AppError,
    domain::ports::{HsmError, StoreError},
    hsm::StartError,
};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Options clap cannot check alone, e.g. neither `--self-host` nor `--target`.
    #[error("{0}")]
    Usage(&'static str),
    /// Opening the instance the bench measures: its configuration, environment, runtime.
    #[error(transparent)]
    Instance(#[from] AppError),
    #[error("HSM: {0}")]
    HsmStart(#[from] StartError),
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{target} is not a server address: {source}")]
    Address { target: String, source: tonic::codegen::http::uri::InvalidUri },
    #[error("connecting to {target}: {source}")]
    Connect { target: String, source: tonic::transport::Error },
    #[error("the admin key is not ASCII")]
    AdminKeyNotAscii,
    /// A call the bench needs (not one it measures) was refused.
    #[error("{call}: {code:?}: {message}")]
    Call { call: &'static str, code: tonic::Code, message: String },
    #[error("CreateKey failed after {made} keys: {first}")]
    CreateFailed { made: usize, first: String },
    #[error("CreateKey failed while making keys for the bench: {0}")]
    SetupFailed(String),
    #[error("a master key re-digest is already running on the server: wait for it to finish")]
    RedigestRunning,
    #[error("the re-digest ended with {0} keys still pending")]
    KeysPending(u64),
    #[error("the closed loop had no VALID answer: nothing to multiply")]
    NoValidAnswer,
    #[error("a bench worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("a bench thread panicked")]
    ThreadPanicked,
    #[error("{path}: {source}")]
    ConfigRead { path: PathBuf, source: toml::de::Error },
    #[error("[{section}] in {path} is not a table")]
    SectionNotTable { section: String, path: PathBuf },
    #[error("encoding a configuration: {0}")]
    ConfigWrite(#[from] toml::ser::Error),
    #[error("keyward init --dev failed ({status}): {stderr}")]
    InitFailed { status: ExitStatus, stderr: String },
    #[error("keyward serve exited at start ({0}); run it by hand to see why")]
    ServerExited(ExitStatus),
    #[error("keyward serve did not start within 30 s (is another server using the data directory?)")]
    ServerTimeout,
    #[error("etcd not found: run scripts/install-deps.sh")]
    EtcdMissing,
    #[error("an etcd member exited at start ({0}); run it by hand to see why")]
    EtcdExited(ExitStatus),
    #[error("etcd at {0} did not report a leader within 20 s")]
    EtcdTimeout(String),
    /// A cluster bench step that could not complete (what, and what it saw instead).
    #[error("{0}")]
    Cluster(String),
    #[error("no VerifyKey or no-op figures to draw (run the verify scenario)")]
    NothingToChart,
    #[error("drawing the chart: {0}")]
    Chart(String),
    #[error("the progress bar: {0}")]
    Progress(#[from] indicatif::style::TemplateError),
    #[error("encoding the report: {0}")]
    Json(#[from] serde_json::Error),
}

impl BenchError {
    /// A refused call the bench needed, with its code and message.
    pub fn call(call: &'static str, status: &tonic::Status) -> Self {
        Self::Call { call, code: status.code(), message: status.message().to_owned() }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
