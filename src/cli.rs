//! The command line: clap's definition of every command, and the dispatch to the module that
//! runs it (`init`, `app::serve`, `admin`, the benches).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{admin, app, init, server::Serving, telemetry};

#[derive(Parser, Debug)]
#[command(name = "keyward", version, about = "Self-hosted API-key service with its master key in a PKCS#11 HSM")]
struct Cli {
    /// Log output format (logs go to stderr; filter with RUST_LOG).
    #[arg(long, value_enum, default_value = "text", env = "KEYWARD_LOG_FORMAT", global = true)]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the master key in the HSM and the database with a root key (printed once).
    Init(InitArgs),
    /// Serve the gRPC API.
    Serve(ServeArgs),
    /// Measure. Without a subcommand: the load suite (`--self-host`, or `--target` and
    /// `--key-file`), every scenario against the no-op RPC and the raw HSM; the subcommands
    /// measure one thing each.
    Bench(BenchArgs),
    /// The HSM master key of a running server: status, rotate, retire.
    Master(admin::MasterArgs),
    /// The audit trail of a running server: verify the chain, query, export, checkpoint, usage.
    Audit(admin::AuditArgs),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    suite: SuiteArgs,
}

/// `keyward bench` without a subcommand.
#[derive(Args, Debug)]
struct SuiteArgs {
    /// Start a development server of its own (a temporary data directory and SoftHSM2 token,
    /// removed afterwards) and measure it.
    #[arg(long, conflicts_with = "target")]
    self_host: bool,
    /// Address of a running server to measure (with --key-file).
    #[arg(long, requires = "key_file")]
    target: Option<String>,
    /// File whose first line is an admin key of --target (it creates, rotates and revokes keys).
    #[arg(long, requires = "target")]
    key_file: Option<PathBuf>,
    /// With --target: the server's data directory, to measure the raw HSM on its token too.
    #[arg(long, requires = "target")]
    data_dir: Option<PathBuf>,
    /// With --data-dir: its configuration file (default: DATA_DIR/keyward.toml).
    #[arg(long, requires = "data_dir")]
    config: Option<PathBuf>,
    /// Scenarios to run [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<crate::bench_suite::Scenario>,
    /// Keys made for the verify scenarios; calls are spread over them.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Calls in flight at once; each scenario runs at each.
    #[arg(long, value_delimiter = ',', default_value = "16,64", conflicts_with = "sweep")]
    concurrency: Vec<usize>,
    /// Like --concurrency, for a chart: by default only the verify scenario.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<usize>,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds per scenario (and per baseline run).
    #[arg(long, default_value_t = 5, conflicts_with = "count")]
    seconds: u64,
    /// Calls per scenario (and per baseline run) instead of --seconds.
    #[arg(long)]
    count: Option<u64>,
    /// Print one JSON document instead of the table (no progress bar).
    #[arg(long)]
    json: bool,
    /// Draw p50/p99 latency and calls/s against concurrency (VerifyKey and the no-op) to this SVG.
    #[arg(long)]
    chart: Option<PathBuf>,
}

impl SuiteArgs {
    fn into_suite(
        self,
    ) -> Result<(app::SuiteTarget, crate::bench_suite::SuiteOptions, app::SuiteOutput), app::AppError> {
        use crate::bench_suite::Scenario;
        let where_ = match (self.self_host, self.target, self.key_file) {
            (true, _, _) => app::SuiteTarget::SelfHost,
            (false, Some(target), Some(key_file)) => app::SuiteTarget::Remote {
                target,
                key_file,
                instance: self.data_dir.map(|d| app::Options::new(d, self.config, false)),
            },
            _ => {
                return Err(app::AppError::Refused(
                    "keyward bench needs --self-host, or --target ADDR --key-file FILE (or a subcommand: see --help)"
                        .into(),
                ));
            }
        };
        let sweep = !self.sweep.is_empty();
        let mut scenarios = match (self.scenarios.is_empty(), sweep) {
            (false, _) => self.scenarios,
            (true, true) => vec![Scenario::Verify],
            (true, false) => Scenario::ALL.to_vec(),
        };
        scenarios.sort();
        scenarios.dedup();
        let concurrency = if sweep { self.sweep } else { self.concurrency };
        if concurrency.contains(&0) || self.connections == 0 || self.count == Some(0) || self.seconds == 0 {
            return Err(app::AppError::Refused(
                "--concurrency, --sweep, --connections, --seconds and --count must be at least 1".into(),
            ));
        }
        let limit = match self.count {
            Some(n) => crate::bench_drive::Limit::Calls(n),
            None => crate::bench_drive::Limit::For(Duration::from_secs(self.seconds)),
        };
        let options = crate::bench_suite::SuiteOptions {
            scenarios,
            keys: self.keys,
            concurrency,
            connections: self.connections,
            limit,
        };
        Ok((where_, options, app::SuiteOutput { json: self.json, chart: self.chart }))
    }
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// VerifyKey calls/s and latency percentiles against a running server.
    Verify {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        target: String,
        /// File whose first line is a key holding `keyward:keys:create` and `keyward:verify` (e.g.
        /// DATA_DIR/root.key).
        #[arg(long)]
        key_file: PathBuf,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// HTTP/2 connections the calls share.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Compare a key with every policy set against one with none, in alternating rounds of
        /// `--seconds` each (three of each).
        #[arg(long)]
        policies: bool,
    },
    /// Key and master key rotation against a running server. First RotateKey: makes
    /// `--rotations` keys and rotates each once, reporting latency percentiles and rate. Then
    /// master key rotation: tops the server up to `--keys` keys (concurrent CreateKey, timed),
    /// runs a VerifyKey baseline for `--seconds`, then rotates the master key under the same
    /// VerifyKey load and reports the time until every key verifies under the new version, and
    /// VerifyKey during that re-digest against the baseline. Each run adds a master key version
    /// and leaves its keys behind: use a fresh data directory for comparable figures.
    Rotation {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        target: String,
        /// File whose first line is a key holding `keyward:keys:create`, `keyward:keys:rotate`,
        /// `keyward:verify` and `keyward:master:rotate` (e.g. DATA_DIR/root.key).
        #[arg(long)]
        key_file: PathBuf,
        /// Keys to make and rotate once each for the RotateKey figures (0: skip).
        #[arg(long, default_value_t = 2000)]
        rotations: usize,
        /// Keys the server holds, at least, when the master key rotates (made if missing).
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// RotateKey and VerifyKey calls in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// HTTP/2 connections the calls share.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// CreateKey calls in flight at once while making keys.
        #[arg(long, default_value_t = 64)]
        create_concurrency: usize,
        /// Seconds of the VerifyKey baseline before the master key rotation.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Overload: measures the sustainable VerifyKey rate with a closed loop (`--concurrency`
    /// callers), then starts calls on a fixed schedule at `--multiplier` times that rate over
    /// `--connections` connections, whatever the answers. Reports both phases: offered rate,
    /// accepted calls/s and latency, RESOURCE_EXHAUSTED answers (shed) and their latency, other
    /// outcomes, and the server's resident memory when it runs on this machine.
    Overload {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        target: String,
        /// File whose first line is a key holding `keyward:keys:create` and `keyward:verify` (e.g.
        /// DATA_DIR/root.key).
        #[arg(long)]
        key_file: PathBuf,
        /// Seconds per phase.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Callers of the closed loop (enough to saturate the server).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP/2 connections per phase.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The open loop's rate as a multiple of the sustainable one.
        #[arg(long, default_value_t = 3.0)]
        multiplier: f64,
        /// The server's process id, for its memory [default: the local process listening on
        /// --target's port, if readable].
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Audit queries at scale, offline (stop the server first): fills the trail with sealed
    /// synthetic events up to --events, then times one key's newest 100.
    Audit {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Keys the synthetic events are spread over.
        #[arg(long, default_value_t = 1000)]
        keys: usize,
        #[arg(long, default_value_t = 500)]
        queries: usize,
    },
    /// What the usage log costs (stop the server first): the writer's records/s and disk bytes
    /// per record in a scratch database, then VerifyKey with the log off and on, in alternating
    /// rounds, each a `keyward serve` of this instance on a free port.
    Usage {
        #[command(flatten)]
        common: Common,
        /// Records written to the scratch database.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Rounds of each (off, on, off, on, ...).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per round.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// Raw HMAC-SHA256 verifications per second through keyward's PKCS#11 adapter.
    Hsm {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Call the module from plain OS threads (no async hop): the raw token ceiling.
        #[arg(long)]
        direct: bool,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// Data directory: database, configuration (keyward.toml) and, with --dev, the SoftHSM2 token.
    #[arg(long, env = "KEYWARD_DATA_DIR")]
    data_dir: PathBuf,
    /// Configuration file (default: DATA_DIR/keyward.toml).
    #[arg(long, env = "KEYWARD_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: a SoftHSM2 token inside DATA_DIR, made on first use.
    #[arg(long)]
    dev: bool,
}

impl Common {
    fn options(self) -> app::Options {
        app::Options::new(self.data_dir, self.config, self.dev)
    }
}

#[derive(Args, Debug)]
struct InitArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on [default: 127.0.0.1:50051, or `listen` in the configuration].
    #[arg(long, env = "KEYWARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Write the bound address to this file once serving (useful with port 0).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics on `GET /metrics` at this address [default: `metrics_listen` in
    /// the configuration; off when neither is set].
    #[arg(long, env = "KEYWARD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Write the bound metrics address to this file (written before `--addr-file`).
    #[arg(long)]
    metrics_addr_file: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain, the server's first [default: `tls.cert`].
    #[arg(long, env = "KEYWARD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert` [default: `tls.key`].
    #[arg(long, env = "KEYWARD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// mTLS: PEM CA certificates client certificates must chain to [default: `tls.client_ca`].
    #[arg(long, env = "KEYWARD_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// Serve plaintext gRPC on a non-loopback address (behind a TLS-terminating proxy) [default:
    /// `server.allow_plaintext`].
    #[arg(long, env = "KEYWARD_ALLOW_PLAINTEXT")]
    allow_plaintext: bool,
}

impl ServeArgs {
    fn serving(&self) -> Serving {
        Serving {
            listen: self.listen,
            addr_file: self.addr_file.clone(),
            metrics_listen: self.metrics_listen,
            metrics_addr_file: self.metrics_addr_file.clone(),
            tls: crate::config::TlsFlags {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                client_ca: self.client_ca.clone(),
            },
            allow_plaintext: self.allow_plaintext,
        }
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up logging itself, inside its runtime, where the trace exporter lives.
    if !matches!(cli.command, Command::Serve(_)) {
        telemetry::init(cli.log_format);
    }
    let result = match cli.command {
        Command::Init(a) => init::init(&a.common.options()),
        Command::Serve(a) => {
            let serving = a.serving();
            app::serve(&a.common.options(), &serving, cli.log_format)
        }
        Command::Bench(BenchArgs {
            command: Some(BenchCommand::Verify { target, key_file, concurrency, connections, seconds, policies }),
            ..
        }) => {
            let seconds = Duration::from_secs(seconds);
            app::bench_verify(&target, &key_file, concurrency, connections, seconds, policies)
        }
        Command::Bench(BenchArgs {
            command:
                Some(BenchCommand::Rotation {
                    target,
                    key_file,
                    rotations,
                    keys,
                    concurrency,
                    connections,
                    create_concurrency,
                    seconds,
                }),
            ..
        }) => {
            let options = crate::bench_rotation::RotationOptions {
                rotations,
                keys,
                concurrency,
                connections,
                create_concurrency,
                baseline: Duration::from_secs(seconds),
            };
            app::bench_rotation(&target, &key_file, &options)
        }
        Command::Bench(BenchArgs { command: None, suite }) => {
            suite.into_suite().and_then(|(where_, options, output)| app::bench_suite(where_, options, output))
        }
        Command::Bench(BenchArgs {
            command:
                Some(BenchCommand::Overload { target, key_file, seconds, concurrency, connections, multiplier, pid }),
            ..
        }) => {
            let options = crate::bench_overload::OverloadOptions {
                phase: Duration::from_secs(seconds),
                concurrency,
                connections,
                multiplier,
                pid,
                ..Default::default()
            };
            app::bench_overload(&target, &key_file, &options)
        }
        Command::Master(a) => admin::run_master(a),
        Command::Audit(a) => admin::run_audit(a),
        Command::Bench(BenchArgs { command: Some(BenchCommand::Audit { common, events, keys, queries }), .. }) => {
            let opts = app::Options::new(common.data_dir, common.config, common.dev);
            app::bench_audit(&opts, crate::bench_audit::AuditBench { events, keys, queries })
        }
        Command::Bench(BenchArgs {
            command: Some(BenchCommand::Usage { common, records, rounds, seconds, concurrency, connections }),
            ..
        }) => {
            let opts = app::Options::new(common.data_dir, common.config, common.dev);
            let round = Duration::from_secs(seconds);
            app::bench_usage(&opts, crate::bench_usage::UsageBench { records, rounds, round, concurrency, connections })
        }
        Command::Bench(BenchArgs {
            command: Some(BenchCommand::Hsm { common, concurrency, seconds, direct }), ..
        }) => {
            let opts = app::Options::new(common.data_dir, common.config, common.dev);
            app::bench_hsm(&opts, concurrency, Duration::from_secs(seconds), direct)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keyward stopped");
            eprintln!("keyward: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_suite::Scenario;

    fn suite(args: &[&str]) -> Result<(app::SuiteTarget, crate::bench_suite::SuiteOptions), String> {
        let cli = Cli::try_parse_from(["keyward", "bench"].iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Bench(BenchArgs { command: None, suite }) = cli.command else {
            return Err("not the suite".into());
        };
        suite.into_suite().map(|(t, o, _)| (t, o)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_suite_defaults_to_every_scenario_at_16_and_64_for_5_seconds() {
        let (target, o) = suite(&["--self-host"]).unwrap();
        assert!(matches!(target, app::SuiteTarget::SelfHost));
        assert_eq!(o.scenarios, Scenario::ALL.to_vec());
        assert_eq!((o.concurrency, o.connections, o.keys), (vec![16, 64], 4, 1000));
        assert_eq!(o.limit, crate::bench_drive::Limit::For(Duration::from_secs(5)));
    }

    #[test]
    fn suite_options_parse_lists_counts_and_a_remote_target() {
        let (target, o) = suite(&[
            "--target",
            "10.0.0.1:50051",
            "--key-file",
            "k",
            "--data-dir",
            "d",
            "--scenarios",
            "revoke,verify",
            "--concurrency",
            "2,8",
            "--count",
            "100",
        ])
        .unwrap();
        let app::SuiteTarget::Remote { target, instance, .. } = target else { panic!("remote expected") };
        assert_eq!((target.as_str(), instance.is_some()), ("10.0.0.1:50051", true));
        assert_eq!(o.scenarios, vec![Scenario::Verify, Scenario::Revoke], "run in the suite's order");
        assert_eq!((o.concurrency, o.limit), (vec![2, 8], crate::bench_drive::Limit::Calls(100)));
        let (_, sweep) = suite(&["--self-host", "--sweep", "1,2,4"]).unwrap();
        assert_eq!((sweep.scenarios, sweep.concurrency), (vec![Scenario::Verify], vec![1, 2, 4]));
    }

    #[test]
    fn the_suite_refuses_what_it_cannot_run() {
        assert!(suite(&[]).unwrap_err().contains("--self-host"));
        assert!(suite(&["--self-host", "--target", "x", "--key-file", "k"]).is_err());
        assert!(suite(&["--target", "x"]).is_err(), "--target needs --key-file");
        assert!(suite(&["--self-host", "--concurrency", "0"]).is_err());
        assert!(suite(&["--self-host", "--seconds", "1", "--count", "5"]).is_err());
        assert!(suite(&["--self-host", "--scenarios", "nope"]).is_err());
    }

    #[test]
    fn admin_commands_parse_their_subcommand_server_and_credential() {
        let cli = Cli::try_parse_from([
            "keyward",
            "master",
            "rotate",
            "--wait",
            "--target",
            "h:1",
            "--ca-cert",
            "ca.pem",
            "--client-cert",
            "c.pem",
            "--client-key",
            "c.key",
        ])
        .unwrap();
        let Command::Master(m) = cli.command else { panic!("master expected") };
        assert!(matches!(m.command, admin::MasterCommand::Rotate { wait: true }));
        assert_eq!((m.target.as_str(), m.key_file), ("h:1", None));
        assert_eq!(
            (m.tls.ca, m.tls.cert, m.tls.key),
            (Some("ca.pem".into()), Some("c.pem".into()), Some("c.key".into()))
        );

        let cli =
            Cli::try_parse_from(["keyward", "audit", "--key-file", "k", "query", "--code", "UNAUTHENTICATED"]).unwrap();
        let Command::Audit(a) = cli.command else { panic!("audit expected") };
        let admin::AuditCommand::Query { code, limit, .. } = a.command else { panic!("query expected") };
        assert_eq!((code.as_str(), limit, a.key_file), ("UNAUTHENTICATED", 100, Some("k".into())));
        assert_eq!(a.target, "127.0.0.1:50051");
        assert!(Cli::try_parse_from(["keyward", "master", "retire"]).is_err(), "retire needs a version");
    }

    #[test]
    fn bench_subcommands_still_parse() {
        let cli = Cli::try_parse_from(["keyward", "bench", "verify", "--key-file", "k", "--policies"]).unwrap();
        assert!(matches!(cli.command, Command::Bench(BenchArgs { command: Some(BenchCommand::Verify { .. }), .. })));
        assert!(Cli::try_parse_from(["keyward", "bench", "--self-host", "verify", "--key-file", "k"]).is_err());
    }
}
