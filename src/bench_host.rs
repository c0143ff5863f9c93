//! Servers the benches start themselves: a `keyward serve` child of this executable on a free
//! port (stopped with SIGTERM on drop), and for `keyward bench --self-host` a development
//! instance in a temporary directory (a fresh SoftHSM2 token, removed afterwards).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::app::Options;

/// A `keyward serve` child on a free port; stopped with SIGTERM on drop.
pub(crate) struct Server(Child);

impl Server {
    /// Starts `keyward serve` of `opts` with `config` on 127.0.0.1:0 and waits for its address.
    pub(crate) fn start(opts: &Options, config: &Path, addr_file: &Path) -> Result<(Self, String), String> {
        let _ = std::fs::remove_file(addr_file);
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&opts.data_dir)
            .arg("--config")
            .arg(config)
            .arg("--addr-file")
            .arg(addr_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if opts.dev {
            cmd.arg("--dev");
        }
        let mut server = Server(cmd.spawn().map_err(|e| format!("starting keyward serve: {e}"))?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(addr_file)
                && addr.ends_with('\n')
            {
                return Ok((server, addr.trim().to_owned()));
            }
            if let Ok(Some(status)) = server.0.try_wait() {
                return Err(format!("keyward serve exited at start ({status}); run it by hand to see why"));
            }
            if Instant::now() > deadline {
                return Err(
                    "keyward serve did not start within 30 s (is another server using the data directory?)".into()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    /// SIGTERM (a clean stop: the usage log is written out), then waits.
    fn drop(&mut self) {
        let term = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        if !term.is_ok_and(|s| s.success()) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A development instance of its own: `keyward init --dev` in a temporary directory, then
/// `keyward serve --dev` on it. Dropping it stops the server and removes the directory.
pub(crate) struct SelfHost {
    // Field order is drop order: the server stops before its directory goes.
    _server: Server,
    pub(crate) addr: String,
    pub(crate) opts: Options,
    pub(crate) root_key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SelfHost {
    /// Runs before any thread starts: the caller then points SoftHSM2 at the new token.
    pub(crate) fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("keyward-bench-").tempdir().map_err(|e| e.to_string())?;
        let data_dir = dir.path().join("data");
        let opts = Options::new(data_dir.clone(), None, true);
        let init = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(["init", "--dev", "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null()) // the root key: kept in DATA_DIR/root.key instead
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("running keyward init --dev: {e}"))?;
        if !init.status.success() {
            return Err(format!(
                "keyward init --dev failed ({}): {}",
                init.status,
                String::from_utf8_lossy(&init.stderr).trim()
            ));
        }
        let (server, addr) = Server::start(&opts, &opts.config, &dir.path().join("addr"))?;
        let root_key_file = data_dir.join("root.key");
        Ok(Self { _server: server, addr, opts, root_key_file, _dir: dir })
    }
}
