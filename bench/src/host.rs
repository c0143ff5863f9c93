//! Servers the benches start themselves: a `keyward serve` child process on a free port (stopped
//! with SIGTERM on drop), and for `keyward-bench --self-host` a development instance in a
//! temporary directory (a fresh SoftHSM2 token, removed afterwards). The children run the real
//! server through this executable's hidden `keyward` subcommand (see `cli`), so the bench needs
//! no separately built `keyward` binary and never measures a server inside its own process.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keyward::app::Options;

use crate::error::{BenchError, Result};

/// The hidden subcommand of `keyward-bench` that runs keyward's own command line.
pub const KEYWARD_SUBCOMMAND: &str = "keyward";

/// `keyward ARGS` as a child process: this executable's hidden subcommand.
fn keyward_command() -> Result<Command> {
    let exe = std::env::current_exe().map_err(BenchError::io("finding the keyward-bench executable"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(KEYWARD_SUBCOMMAND);
    Ok(cmd)
}

/// A `keyward serve` child on a free port; stopped with SIGTERM on drop.
pub(crate) struct Server(Child);

impl Server {
    /// Starts `keyward serve` of `opts` with `config` on 127.0.0.1:0 and waits for its address.
    pub(crate) fn start(opts: &Options, config: &Path, addr_file: &Path) -> Result<(Self, String)> {
        Self::start_with(opts, config, addr_file, &[])
    }

    /// Like [`Server::start`], with `extra` arguments for `keyward serve` (e.g. `--etcd`).
    pub(crate) fn start_with(
        opts: &Options,
        config: &Path,
        addr_file: &Path,
        extra: &[String],
    ) -> Result<(Self, String)> {
        let _ = std::fs::remove_file(addr_file);
        let mut cmd = keyward_command()?;
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&opts.data_dir)
            .arg("--config")
            .arg(config)
            .arg("--addr-file")
            .arg(addr_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(server_log(addr_file));
        if opts.dev {
            cmd.arg("--dev");
        }
        let mut server = Server(cmd.spawn().map_err(BenchError::io("starting keyward serve"))?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(addr_file)
                && addr.ends_with('\n')
            {
                return Ok((server, addr.trim().to_owned()));
            }
            if let Ok(Some(status)) = server.0.try_wait() {
                return Err(BenchError::ServerExited(status));
            }
            if Instant::now() > deadline {
                return Err(BenchError::ServerTimeout);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where a server's log goes: `KEYWARD_BENCH_SERVER_LOGS/<addr file name>.log` when that
/// variable names a directory, else nowhere.
fn server_log(addr_file: &Path) -> Stdio {
    let Some(dir) = std::env::var_os("KEYWARD_BENCH_SERVER_LOGS") else { return Stdio::null() };
    let name = addr_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match std::fs::File::create(Path::new(&dir).join(format!("{name}.log"))) {
        Ok(file) => Stdio::from(file),
        Err(_) => Stdio::null(),
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
    pub(crate) root_key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl SelfHost {
    /// Runs before any thread starts: the caller then points SoftHSM2 at the new token.
    pub(crate) fn start() -> Result<Self> {
        let dir = temp_dir()?;
        let data_dir = dir.path().join("data");
        let opts = Options::new(data_dir.clone(), None, true);
        init_dev(&data_dir, &[])?;
        let (server, addr) = Server::start(&opts, &opts.config, &dir.path().join("addr"))?;
        let root_key_file = data_dir.join("root.key");
        Ok(Self { _server: server, addr, opts, root_key_file, _dir: dir })
    }
}

/// A temporary directory for an instance, removed on drop.
pub(crate) fn temp_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("keyward-bench-")
        .tempdir()
        .map_err(BenchError::io("creating a temporary directory"))
}

/// `keyward init --dev --data-dir DATA_DIR EXTRA...`: a development instance (its root key in
/// DATA_DIR/root.key).
pub(crate) fn init_dev(data_dir: &Path, extra: &[String]) -> Result<()> {
    let init = keyward_command()?
        .args(["init", "--dev", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null()) // the root key: kept in DATA_DIR/root.key instead
        .stderr(Stdio::piped())
        .output()
        .map_err(BenchError::io("running keyward init --dev"))?;
    if !init.status.success() {
        let stderr = String::from_utf8_lossy(&init.stderr).trim().to_owned();
        return Err(BenchError::InitFailed { status: init.status, stderr });
    }
    Ok(())
}
