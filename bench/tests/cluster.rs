//! `keyward-bench cluster --quick`: the real binary starts 3 etcd members, a 3-node keyward
//! cluster and a single node, and reports every cluster figure as JSON. Needs etcd: without it
//! the test fails and says how to install it.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_keyward-bench");

fn number(report: &serde_json::Value, path: &[&str]) -> f64 {
    let value = path.iter().fold(report, |v, k| &v[k]);
    value.as_f64().unwrap_or_else(|| panic!("{} is not a number in {report}", path.join(".")))
}

#[test]
fn quick_cluster_bench_reports_every_figure_as_json() {
    let etcd = Command::new("etcd").arg("--version").output();
    assert!(etcd.is_ok_and(|o| o.status.success()), "etcd not found: run scripts/install-deps.sh");
    let out = Command::new(BIN).args(["cluster", "--quick", "--json"]).output().expect("keyward-bench runs");
    assert!(out.status.success(), "keyward-bench cluster failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document on stdout");

    for call in ["verify", "create", "revoke"] {
        for side in ["single", "cluster"] {
            assert!(number(&report, &[call, side, "calls_per_sec"]) > 0.0, "{call} on {side}: no call succeeded");
            assert!(number(&report, &[call, side, "p99_ms"]) >= number(&report, &[call, side, "p50_ms"]));
        }
        assert!(number(&report, &[call, "cluster_pct_of_single"]) > 0.0);
    }

    let p = &report["propagation"];
    assert_eq!(p["revocations"], 50, "the quick run revokes 50 keys");
    assert_eq!(p["refused"], 50, "every revoked key refused on node B: {p}");
    assert_eq!(p["refusals"]["REVOKED"], 50, "node B answers REVOKED: {p}");
    let (p50, p99, max) = (number(p, &["p50_ms"]), number(p, &["p99_ms"]), number(p, &["max_ms"]));
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{p}");
    assert!(number(p, &["mean_poll_spacing_ms"]) > 0.0);

    let f = &report["fail_closed"];
    assert_eq!((f["members_stopped"].as_u64(), f["members"].as_u64()), (Some(2), Some(3)));
    for figure in ["unavailable_after_ms", "not_serving_after_ms", "valid_again_after_ms", "serving_again_after_ms"] {
        assert!(number(f, &[figure]) > 0.0, "{figure} missing: {f}");
    }
    let held = f["answers_while_failed_closed"].as_object().expect("answers while failed closed");
    assert!(held.get("UNAVAILABLE").and_then(|n| n.as_u64()).is_some_and(|n| n > 0), "{f}");
    assert!(!held.contains_key("VALID"), "a node that failed closed answered VALID: {f}");

    let goals = report["goals"].as_array().expect("goals");
    for goal in ["VerifyKey on a cluster node", "revocation propagation p99", "quorum lost", "quorum back"] {
        assert!(goals.iter().any(|g| g["goal"].as_str().is_some_and(|s| s.starts_with(goal))), "no goal {goal}");
    }
    assert_eq!(report["settings"]["quick"], true);
    assert!(report["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
}
