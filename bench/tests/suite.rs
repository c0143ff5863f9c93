//! `keyward-bench --self-host`: the real binary starts its own server (a `keyward serve` child
//! process), runs every scenario and reports JSON with the ratios and the correctness counts.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_keyward-bench");

#[test]
fn self_hosted_suite_reports_every_scenario_with_ratios_as_json() {
    let out = Command::new(BIN)
        .args(["--self-host", "--seconds", "1", "--concurrency", "2", "--keys", "4", "--json"])
        .output()
        .expect("keyward-bench runs");
    assert!(out.status.success(), "keyward-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document on stdout");
    let rows = report["rows"].as_array().expect("rows");
    for scenario in ["verify", "verify-policies", "verify-invalid", "create", "rotate", "revoke", "audit-query"] {
        let row =
            rows.iter().find(|r| r["scenario"] == scenario).unwrap_or_else(|| panic!("no {scenario} in {report}"));
        assert!(row["calls"].as_u64().unwrap() > 0, "{scenario} made no successful call: {row}");
        assert!(row["pct_of_noop"].as_f64().unwrap() > 0.0, "{scenario} has no no-op ratio: {row}");
        assert!(row["pct_of_hsm"].as_f64().unwrap() > 0.0, "{scenario} has no HSM ratio: {row}");
    }
    let row = |s: &str| rows.iter().find(|r| r["scenario"] == s).unwrap();
    assert_eq!(row("revoke")["checks"]["valid_after_revoke"], 0);
    assert_eq!(row("verify-invalid")["checks"]["valid_answers"], 0);
    assert!(row("verify-invalid")["errors"].as_object().unwrap().is_empty(), "every answer INVALID");
    let baseline = &report["baselines"][0];
    assert!(baseline["noop_before"]["calls_per_sec"].as_f64().unwrap() > 0.0);
    assert!(baseline["hsm_after"]["calls_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(report["goals"].as_array().unwrap().iter().any(|g| g["goal"].as_str().unwrap().contains("revoked")));
}

#[test]
fn bench_without_a_server_or_subcommand_explains_itself() {
    let out = Command::new(BIN).output().expect("keyward-bench runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--self-host"));
}
