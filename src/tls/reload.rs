//! Reloading the TLS files without dropping connections: the `ServerConfig` new handshakes use
//! is swapped; connections already established keep the session they negotiated. Reloads on
//! SIGHUP and when the files' contents change (checked every `reload_interval`). A file that
//! does not load leaves the previous configuration in place, with a warning.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tokio::signal::unix::Signal;
use tokio_rustls::rustls::ServerConfig;

use super::{CertSummary, Files, TlsError, check_key_permissions};
use crate::config::TlsSettings;

/// The TLS configuration in force, and how to load it again.
pub struct TlsReloader {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// The contents last tried, loaded or not: a bad file is reported once, not at every check.
    last_seen: Mutex<blake3::Hash>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The files are as they were last read.
    Unchanged,
    /// New handshakes use this certificate.
    New(CertSummary),
}

impl TlsReloader {
    /// Loads the files; at startup a failure is fatal.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        check_key_permissions(&settings.key);
        let files = Files::read(&settings)?;
        let (config, summary) = files.build(&settings)?;
        summary.log("TLS certificate loaded");
        Ok(Self { last_seen: Mutex::new(files.fingerprint()), current: RwLock::new(Arc::new(config)), settings })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the files again and, if they changed (or `force`), swaps in the configuration they
    /// make. On error the configuration in force stays.
    pub fn reload(&self, force: bool) -> Result<Reloaded, TlsError> {
        let files = Files::read(&self.settings);
        // An unreadable file is reported once too, until the error changes.
        let fingerprint = match &files {
            Ok(files) => files.fingerprint(),
            Err(e) => blake3::hash(e.0.as_bytes()),
        };
        {
            let mut last = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
            if *last == fingerprint && !force {
                return Ok(Reloaded::Unchanged);
            }
            *last = fingerprint;
        }
        let (config, summary) = files?.build(&self.settings)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(Reloaded::New(summary))
    }
}

/// Reloads on SIGHUP, and every `reload_interval` if the files changed, until aborted. Without
/// TLS (`None`), SIGHUP only says so.
pub async fn watch(reloader: Option<Arc<TlsReloader>>, mut hangup: Signal) {
    let Some(reloader) = reloader else {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received; no TLS configured, nothing to reload");
        }
        return;
    };
    let interval = reloader.settings.reload_interval;
    let mut tick = interval.map(|every| {
        let every = every.max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    loop {
        let (force, why) = tokio::select! {
            _ = hangup.recv() => (true, "SIGHUP"),
            _ = async {
                match &mut tick {
                    Some(tick) => tick.tick().await,
                    None => std::future::pending().await,
                }
            } => (false, "file change"),
        };
        let r = reloader.clone();
        match tokio::task::spawn_blocking(move || r.reload(force)).await {
            Ok(Ok(Reloaded::Unchanged)) => {}
            Ok(Ok(Reloaded::New(summary))) => summary.log(&format!("TLS certificate reloaded ({why})")),
            Ok(Err(e)) => {
                let what = "TLS reload failed; new connections keep the previous certificate";
                tracing::warn!(error = %e, trigger = why, "{what}")
            }
            Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
        }
    }
}
