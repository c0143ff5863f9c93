//! The command line of `keyward-bench`: without a subcommand the load suite (`--self-host`, or
//! `--target` and `--key-file`); the subcommands measure one thing each. The hidden `keyward`
//! subcommand runs keyward's own command line: the servers the benches start are that, as
//! child processes.

use std::{ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, parser::ValueSource};
use keyward::{app::Options, cli::InstanceArgs, telemetry};

use crate::{
    cluster::ClusterOptions,
    commands::{self, SuiteOutput, SuiteTarget},
    drive::Limit,
    error::{BenchError, Result},
    host::KEYWARD_SUBCOMMAND,
    offline::{anomaly::AnomalyBench, audit::AuditBench, usage::UsageBench},
    overload::OverloadOptions,
    rotation::RotationOptions,
    suite::{Scenario, SuiteOptions},
};

#[derive(Parser, Debug)]
#[command(
    name = "keyward-bench",
    version,
    about = "Measure keyward. Without a subcommand: the load suite (--self-host, or --target and --key-file), \
             every scenario against the no-op RPC and the raw HSM; the subcommands measure one thing each."
)]
struct Cli {
    /// Log output format (logs go to stderr; filter with RUST_LOG).
    #[arg(long, value_enum, default_value = "text", env = "KEYWARD_LOG_FORMAT", global = true)]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    suite: SuiteArgs,
}

/// `keyward-bench` without a subcommand.
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
    scenarios: Vec<Scenario>,
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
    fn into_suite(self) -> Result<(SuiteTarget, SuiteOptions, SuiteOutput)> {
        let where_ = match (self.self_host, self.target, self.key_file) {
            (true, _, _) => SuiteTarget::SelfHost,
            (false, Some(target), Some(key_file)) => SuiteTarget::Remote {
                target,
                key_file,
                instance: self.data_dir.map(|d| Box::new(Options::new(d, self.config, false))),
            },
            _ => {
                return Err(BenchError::Usage(
                    "keyward-bench needs --self-host, or --target ADDR --key-file FILE (or a subcommand: see --help)",
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
            return Err(BenchError::Usage(
                "--concurrency, --sweep, --connections, --seconds and --count must be at least 1",
            ));
        }
        let limit = match self.count {
            Some(n) => Limit::Calls(n),
            None => Limit::For(Duration::from_secs(self.seconds)),
        };
        let options = SuiteOptions { scenarios, keys: self.keys, concurrency, connections: self.connections, limit };
        Ok((where_, options, SuiteOutput { json: self.json, chart: self.chart }))
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
        /// Compare VerifySignature (a signing key, a fresh nonce per call) against VerifyKey, in
        /// alternating rounds of `--seconds` each (three of each).
        #[arg(long, conflicts_with = "policies")]
        signing: bool,
    },
    /// The web console's page times against a running server started with --console-listen:
    /// adds `--keys` keys (concurrent CreateKey, timed), signs in, then loads each main page
    /// `--rounds` times, reporting the server's time (Server-Timing) and the client's.
    Console {
        /// Server address (gRPC).
        #[arg(long, default_value = "127.0.0.1:50051")]
        target: String,
        /// The console's address (`--console-listen` of the server).
        #[arg(long, default_value = "127.0.0.1:8443")]
        console: std::net::SocketAddr,
        /// File whose first line is a key holding `keyward:keys:create`, `keyward:keys:read`,
        /// `keyward:audit:read` and `keyward:master:read` (e.g. DATA_DIR/root.key).
        #[arg(long)]
        key_file: PathBuf,
        /// Keys to add before measuring (0: measure what the server has).
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// CreateKey calls in flight while adding keys.
        #[arg(long, default_value_t = 64)]
        create_concurrency: usize,
        /// Loads of each page.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Seconds of VerifyKey on one key before measuring, so that its page (usage chart, top
        /// addresses) is measured for a busy key (0: none).
        #[arg(long, default_value_t = 5)]
        busy_seconds: u64,
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
        instance: InstanceArgs,
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
        instance: InstanceArgs,
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
    /// What the anomaly detector costs VerifyKey (stop the server first): VerifyKey with
    /// `[anomaly] enabled` off and on, in alternating rounds, each a `keyward serve` of this
    /// instance on a free port; every call reports a client_ip.
    Anomaly {
        #[command(flatten)]
        instance: InstanceArgs,
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
        instance: InstanceArgs,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Call the module from plain OS threads (no async hop): the raw token ceiling.
        #[arg(long)]
        direct: bool,
    },
    /// Cluster mode on etcd against single-node sled mode, same run: starts 3 etcd members, a
    /// cluster of `--nodes` keyward nodes on them and a single-node instance, then measures
    /// VerifyKey on node A against the single node, CreateKey and RevokeKey throughput on both,
    /// revocation propagation (revoke on node A, poll node B until it refuses) and the time node
    /// A takes to fail closed when 2 of 3 etcd members stop (SIGSTOP) and to recover (SIGCONT).
    /// Prints markdown; needs etcd (scripts/install-deps.sh).
    Cluster {
        /// keyward nodes in the cluster (node A revokes, node B is polled).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Seconds of VerifyKey per instance (alternating rounds), and of CreateKey and RevokeKey each.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Calls in flight at once for VerifyKey, CreateKey and RevokeKey.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// HTTP/2 connections per instance.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Keys revoked on node A, one after another, each polled on node B until refused.
        #[arg(long, default_value_t = 1000)]
        revocations: usize,
        /// Concurrent VerifyKey pollers on node B per revocation, each calling back to back.
        #[arg(long, default_value_t = 4)]
        pollers: usize,
        /// Times 2 of the 3 etcd members are stopped and resumed.
        #[arg(long, default_value_t = 5)]
        fail_cycles: usize,
        /// The small run: 1 second per measurement, at most 50 revocations, 1 fail-closed cycle.
        #[arg(long)]
        quick: bool,
        /// Print one JSON document instead of markdown.
        #[arg(long)]
        json: bool,
        /// Also write the markdown to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// A Check server (Envoy ext_authz) that allows everything at once: the ceiling of any Check
    /// server, for `scripts/envoy-bench.sh --null-check`.
    #[command(hide = true)]
    NullAuthz {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Where to write the bound address.
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Runs keyward's own command line (`keyward-bench keyward serve ...`): how the benches
    /// start their servers, as child processes of this executable.
    #[command(name = KEYWARD_SUBCOMMAND, hide = true, disable_help_flag = true)]
    Keyward {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// Parses `args` (the program name first). The suite's options do not mix with a subcommand;
/// `--log-format` goes anywhere.
fn parse_from<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    if let Some((name, _)) = matches.subcommand() {
        let suite = SuiteArgs::augment_args(clap::Command::new("suite"));
        let given =
            suite.get_arguments().find(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine));
        if let Some(arg) = given {
            let flag = arg.get_long().unwrap_or(arg.get_id().as_str());
            let message = format!("--{flag} is an option of the suite; the subcommand '{name}' cannot take it");
            return Err(command.error(clap::error::ErrorKind::ArgumentConflict, message));
        }
    }
    Ok(cli)
}

pub fn run() -> ExitCode {
    let cli = parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if let Some(BenchCommand::Keyward { args }) = cli.command {
        // keyward sets up its own logging (`serve` inside its runtime).
        return keyward::cli::run_from(std::iter::once(OsString::from("keyward")).chain(args));
    }
    telemetry::init(cli.log_format);
    match dispatch(cli.command, cli.suite) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keyward-bench stopped");
            eprintln!("keyward-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Option<BenchCommand>, suite: SuiteArgs) -> Result<()> {
    match command {
        None => {
            let (where_, options, output) = suite.into_suite()?;
            commands::suite(where_, options, output)
        }
        Some(BenchCommand::Verify { target, key_file, concurrency, connections, seconds, policies, signing }) => {
            let seconds = Duration::from_secs(seconds);
            if signing {
                commands::verify_signing(&target, &key_file, concurrency, connections, seconds)
            } else {
                commands::verify(&target, &key_file, concurrency, connections, seconds, policies)
            }
        }
        Some(BenchCommand::Console { target, console, key_file, keys, create_concurrency, rounds, busy_seconds }) => {
            let busy = Duration::from_secs(busy_seconds);
            let options = crate::console::ConsoleOptions { keys, create_concurrency, rounds, busy };
            commands::console(&target, console, &key_file, &options)
        }
        Some(BenchCommand::Rotation {
            target,
            key_file,
            rotations,
            keys,
            concurrency,
            connections,
            create_concurrency,
            seconds,
        }) => {
            let options = RotationOptions {
                rotations,
                keys,
                concurrency,
                connections,
                create_concurrency,
                baseline: Duration::from_secs(seconds),
            };
            commands::rotation(&target, &key_file, &options)
        }
        Some(BenchCommand::Overload { target, key_file, seconds, concurrency, connections, multiplier, pid }) => {
            let options = OverloadOptions {
                phase: Duration::from_secs(seconds),
                concurrency,
                connections,
                multiplier,
                pid,
                ..Default::default()
            };
            commands::overload(&target, &key_file, &options)
        }
        Some(BenchCommand::Audit { instance, events, keys, queries }) => {
            commands::audit(&instance.options(), AuditBench { events, keys, queries })
        }
        Some(BenchCommand::Usage { instance, records, rounds, seconds, concurrency, connections }) => {
            let round = Duration::from_secs(seconds);
            commands::usage(&instance.options(), UsageBench { records, rounds, round, concurrency, connections })
        }
        Some(BenchCommand::Anomaly { instance, rounds, seconds, concurrency, connections }) => {
            let round = Duration::from_secs(seconds);
            commands::anomaly(&instance.options(), AnomalyBench { rounds, round, concurrency, connections })
        }
        Some(BenchCommand::Hsm { instance, concurrency, seconds, direct }) => {
            commands::hsm(&instance.options(), concurrency, Duration::from_secs(seconds), direct)
        }
        Some(BenchCommand::Cluster {
            nodes,
            seconds,
            concurrency,
            connections,
            revocations,
            pollers,
            fail_cycles,
            quick,
            json,
            markdown,
        }) => {
            let options = ClusterOptions {
                nodes,
                duration: Duration::from_secs(seconds),
                concurrency,
                connections,
                revocations,
                pollers,
                fail_cycles,
                ..ClusterOptions::full()
            };
            let options = if quick { options.quick() } else { options };
            commands::cluster(&options, json, markdown.as_deref())
        }
        Some(BenchCommand::NullAuthz { listen, addr_file }) => crate::null_authz::serve(listen, addr_file),
        Some(BenchCommand::Keyward { .. }) => unreachable!("run() hands it to keyward's command line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(args: &[&str]) -> std::result::Result<(SuiteTarget, SuiteOptions), String> {
        let cli = parse_from(["keyward-bench"].iter().chain(args)).map_err(|e| e.to_string())?;
        if cli.command.is_some() {
            return Err("not the suite".into());
        }
        cli.suite.into_suite().map(|(t, o, _)| (t, o)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_suite_defaults_to_every_scenario_at_16_and_64_for_5_seconds() {
        let (target, o) = suite(&["--self-host"]).unwrap();
        assert!(matches!(target, SuiteTarget::SelfHost));
        assert_eq!(o.scenarios, Scenario::ALL.to_vec());
        assert_eq!((o.concurrency, o.connections, o.keys), (vec![16, 64], 4, 1000));
        assert_eq!(o.limit, Limit::For(Duration::from_secs(5)));
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
        let SuiteTarget::Remote { target, instance, .. } = target else { panic!("remote expected") };
        assert_eq!((target.as_str(), instance.is_some()), ("10.0.0.1:50051", true));
        assert_eq!(o.scenarios, vec![Scenario::Verify, Scenario::Revoke], "run in the suite's order");
        assert_eq!((o.concurrency, o.limit), (vec![2, 8], Limit::Calls(100)));
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
    fn subcommands_parse_and_do_not_mix_with_the_suite() {
        let cli = parse_from(["keyward-bench", "verify", "--key-file", "k", "--policies"]).unwrap();
        assert!(matches!(cli.command, Some(BenchCommand::Verify { policies: true, .. })));
        let mixed = parse_from(["keyward-bench", "--self-host", "verify", "--key-file", "k"]).unwrap_err();
        assert!(mixed.to_string().contains("--self-host is an option of the suite"), "{mixed}");
        assert!(parse_from(["keyward-bench", "--seconds", "3", "hsm", "--data-dir", "d"]).is_err());
        let logged = parse_from(["keyward-bench", "--log-format", "json", "verify", "--key-file", "k"]).unwrap();
        assert!(matches!(logged.log_format, telemetry::LogFormat::Json));
    }

    #[test]
    fn cluster_defaults_to_3_nodes_and_1000_revocations_and_quick_shrinks_it() {
        let cli = parse_from(["keyward-bench", "cluster"]).unwrap();
        let Some(BenchCommand::Cluster { nodes, revocations, quick, seconds, .. }) = cli.command else {
            panic!("the cluster subcommand expected")
        };
        assert_eq!((nodes, revocations, quick, seconds), (3, 1000, false, 5));
        let quick = parse_from(["keyward-bench", "cluster", "--quick", "--json"]).unwrap();
        assert!(matches!(quick.command, Some(BenchCommand::Cluster { quick: true, json: true, .. })));
    }

    #[test]
    fn the_hidden_keyward_subcommand_passes_every_argument_through() {
        let args = ["keyward-bench", "keyward", "serve", "--dev", "--data-dir", "d", "--help"];
        let cli = parse_from(args).unwrap();
        let Some(BenchCommand::Keyward { args }) = cli.command else { panic!("the keyward subcommand expected") };
        assert_eq!(args, ["serve", "--dev", "--data-dir", "d", "--help"].map(OsString::from));
    }
}
