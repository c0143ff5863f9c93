//! The cluster bench's report: every figure of `keyward-bench cluster`, the goals of issue 16
//! with PASS/MISS, as JSON and as markdown (what the command prints). Pure: no I/O.

use std::{collections::BTreeMap, fmt::Write};

use serde::Serialize;

use crate::{
    figures::Figures,
    suite::report::{Goal, Machine, Stats},
};

/// How the run was set up.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterSettings {
    pub nodes: usize,
    pub etcd_members: usize,
    pub concurrency: usize,
    pub connections: usize,
    /// Seconds of VerifyKey per instance, and of CreateKey and RevokeKey each.
    pub seconds: f64,
    pub revocations: usize,
    pub pollers: usize,
    pub fail_cycles: usize,
    pub quick: bool,
}

/// One call measured on the single node (sled) and on a cluster node (etcd), same run.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub single: Stats,
    pub cluster: Stats,
    pub cluster_pct_of_single: f64,
}

impl Comparison {
    pub fn new((single, cluster): (Stats, Stats)) -> Self {
        let cluster_pct_of_single = 100.0 * cluster.calls_per_sec / single.calls_per_sec;
        Self { single, cluster, cluster_pct_of_single }
    }
}

/// Revocation propagation: from RevokeKey's answer on node A to the first refusal on node B.
#[derive(Clone, Debug, Serialize)]
pub struct Propagation {
    pub revocations: u64,
    /// Revocations B refused within the bench's give-up time (5 s).
    pub refused: u64,
    pub not_refused: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Concurrent VerifyKey pollers on B, each calling back to back.
    pub pollers: usize,
    /// Mean time between two polls of B (all pollers together): the resolution of the figures.
    pub mean_poll_spacing_ms: f64,
    /// B's first refusals, by answer (REVOKED expected).
    pub refusals: BTreeMap<String, u64>,
}

impl Propagation {
    /// `figures`: one latency per refused revocation, the others counted as errors.
    pub fn new(figures: &Figures, pollers: usize, mean_poll_spacing_ms: f64, refusals: BTreeMap<String, u64>) -> Self {
        Self {
            revocations: (figures.calls + figures.errors) as u64,
            refused: figures.calls as u64,
            not_refused: figures.errors as u64,
            p50_ms: figures.quantile_ms(0.5),
            p90_ms: figures.quantile_ms(0.9),
            p99_ms: figures.quantile_ms(0.99),
            max_ms: figures.quantile_ms(1.0),
            pollers,
            mean_poll_spacing_ms,
            refusals,
        }
    }
}

/// One loss of quorum (SIGSTOP) and its return (SIGCONT): when node A's answers changed.
#[derive(Clone, Debug, Serialize)]
pub struct FailClosedCycle {
    /// From the SIGSTOPs to the first VerifyKey UNAVAILABLE.
    pub unavailable_after_ms: f64,
    /// From the SIGSTOPs to the first health NOT_SERVING.
    pub not_serving_after_ms: f64,
    /// From the SIGCONTs to the first VALID again.
    pub valid_again_after_ms: f64,
    /// From the SIGCONTs to health SERVING again.
    pub serving_again_after_ms: f64,
}

/// Quorum lost and regained, one cycle or more: each cycle, and the slowest of each figure.
#[derive(Clone, Debug, Serialize)]
pub struct FailClosed {
    pub members_stopped: usize,
    pub members: usize,
    pub cycles: Vec<FailClosedCycle>,
    /// The slowest cycle's figure, each.
    pub unavailable_after_ms: f64,
    pub not_serving_after_ms: f64,
    pub valid_again_after_ms: f64,
    pub serving_again_after_ms: f64,
    /// How long VerifyKey was watched in each cycle once the node had failed closed.
    pub hold_ms: f64,
    /// VerifyKey's answers during those watches, by name (VALID must not appear).
    pub answers_while_failed_closed: BTreeMap<String, u64>,
    pub poll_interval_ms: f64,
}

impl FailClosed {
    pub fn new(
        members_stopped: usize,
        members: usize,
        cycles: Vec<FailClosedCycle>,
        hold_ms: f64,
        answers_while_failed_closed: BTreeMap<String, u64>,
        poll_interval_ms: f64,
    ) -> Self {
        let worst = |f: fn(&FailClosedCycle) -> f64| cycles.iter().map(f).fold(f64::NAN, f64::max);
        Self {
            members_stopped,
            members,
            unavailable_after_ms: worst(|c| c.unavailable_after_ms),
            not_serving_after_ms: worst(|c| c.not_serving_after_ms),
            valid_again_after_ms: worst(|c| c.valid_again_after_ms),
            serving_again_after_ms: worst(|c| c.serving_again_after_ms),
            cycles,
            hold_ms,
            answers_while_failed_closed,
            poll_interval_ms,
        }
    }
}

/// The whole run: `--json` prints this.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    pub machine: Machine,
    pub settings: ClusterSettings,
    pub verify: Comparison,
    pub create: Comparison,
    pub revoke: Comparison,
    pub propagation: Propagation,
    pub fail_closed: FailClosed,
    pub goals: Vec<Goal>,
}

impl ClusterReport {
    pub fn new(
        machine: Machine,
        settings: ClusterSettings,
        verify: (Stats, Stats),
        create: (Stats, Stats),
        revoke: (Stats, Stats),
        propagation: Propagation,
        fail_closed: FailClosed,
    ) -> Self {
        let mut report = Self {
            machine,
            settings,
            verify: Comparison::new(verify),
            create: Comparison::new(create),
            revoke: Comparison::new(revoke),
            propagation,
            fail_closed,
            goals: Vec::new(),
        };
        report.goals = goals(&report);
        report
    }

    /// The figures as markdown tables, then the goals and the machine.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Cluster: {} keyward nodes on {} etcd members; single node: sled. {} calls in flight over {} connections, \
             {} s per instance and call{}.\n",
            s.nodes,
            s.etcd_members,
            s.concurrency,
            s.connections,
            s.seconds,
            if s.quick { " (quick run)" } else { "" }
        );
        let _ = writeln!(
            out,
            "| call | single node calls/s | cluster node calls/s | cluster / single | single p50 / p99 ms | cluster p50 / p99 ms | errors (single; cluster) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
        for (name, c) in [("VerifyKey", &self.verify), ("CreateKey", &self.create), ("RevokeKey", &self.revoke)] {
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {:.0} | {:.1} % | {:.3} / {:.3} | {:.3} / {:.3} | {}; {} |",
                c.single.calls_per_sec,
                c.cluster.calls_per_sec,
                c.cluster_pct_of_single,
                c.single.p50_ms,
                c.single.p99_ms,
                c.cluster.p50_ms,
                c.cluster.p99_ms,
                errors(&c.single.errors),
                errors(&c.cluster.errors)
            );
        }
        let p = &self.propagation;
        let _ = writeln!(
            out,
            "\nRevocation propagation (RevokeKey answered on node A → first refusal on node B), {} revocations one \
             after another, {} pollers on B calling back to back (one poll every {:.3} ms on average):\n",
            p.revocations, p.pollers, p.mean_poll_spacing_ms
        );
        let _ = writeln!(out, "| p50 ms | p90 ms | p99 ms | max ms | refused | not refused in 5 s | first refusals |");
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---|");
        let _ = writeln!(
            out,
            "| {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.max_ms,
            p.refused,
            p.not_refused,
            errors(&p.refusals)
        );
        let f = &self.fail_closed;
        let _ = writeln!(
            out,
            "\nFail-closed: {} of {} etcd members stopped (SIGSTOP), then resumed (SIGCONT), {} time(s); node A's \
             VerifyKey and health probed every {} ms (plus the call):\n",
            f.members_stopped,
            f.members,
            f.cycles.len(),
            f.poll_interval_ms
        );
        let _ = writeln!(
            out,
            "| cycle | VerifyKey UNAVAILABLE after | health NOT_SERVING after | VALID again after | SERVING again after |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        let rows = f.cycles.iter().enumerate().map(|(i, c)| ((i + 1).to_string(), c.clone()));
        let worst = FailClosedCycle {
            unavailable_after_ms: f.unavailable_after_ms,
            not_serving_after_ms: f.not_serving_after_ms,
            valid_again_after_ms: f.valid_again_after_ms,
            serving_again_after_ms: f.serving_again_after_ms,
        };
        for (name, c) in rows.chain(std::iter::once(("slowest".to_owned(), worst))) {
            let _ = writeln!(
                out,
                "| {name} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
                c.unavailable_after_ms, c.not_serving_after_ms, c.valid_again_after_ms, c.serving_again_after_ms
            );
        }
        let _ = writeln!(
            out,
            "\nVerifyKey on node A in the {:.0} ms after it had failed closed, each cycle: {}",
            f.hold_ms,
            errors(&f.answers_while_failed_closed)
        );
        let _ = writeln!(out);
        for g in &self.goals {
            let _ = writeln!(out, "- {} {}: {}", if g.pass { "PASS" } else { "MISS" }, g.goal, g.measured);
        }
        let m = &self.machine;
        let _ = writeln!(
            out,
            "\nmachine: {} cores, {}; keyward {}; etcd, every node, the single node and the bench on the same cores",
            m.cores, m.cpu_model, m.keyward_version
        );
        out
    }
}

fn errors(by_code: &BTreeMap<String, u64>) -> String {
    if by_code.is_empty() {
        return "0".into();
    }
    by_code.iter().map(|(code, n)| format!("{code}={n}")).collect::<Vec<_>>().join(" ")
}

/// The goals of issue 16 this run speaks to.
fn goals(r: &ClusterReport) -> Vec<Goal> {
    let ratio = |goal: &str, c: &Comparison, at_least: f64| Goal {
        goal: goal.into(),
        measured: format!(
            "{:.0}/s = {:.1} % of {:.0}/s",
            c.cluster.calls_per_sec, c.cluster_pct_of_single, c.single.calls_per_sec
        ),
        pass: c.cluster_pct_of_single >= at_least,
    };
    let (p, f) = (&r.propagation, &r.fail_closed);
    let valid_held = f.answers_while_failed_closed.get("VALID").copied().unwrap_or(0);
    let held: u64 = f.answers_while_failed_closed.values().sum();
    vec![
        ratio("VerifyKey on a cluster node >= 90 % of single-node sled", &r.verify, 90.0),
        ratio("CreateKey in cluster mode >= 50 % of single node (aim)", &r.create, 50.0),
        ratio("RevokeKey in cluster mode >= 50 % of single node (aim)", &r.revoke, 50.0),
        Goal {
            goal: "revocation propagation p99 < 250 ms".into(),
            measured: format!("p99 {:.3} ms over {} revocations", p.p99_ms, p.revocations),
            pass: p.p99_ms < 250.0 && p.not_refused == 0,
        },
        Goal {
            goal: "revocation propagation max < 1 s, every revoked key refused".into(),
            measured: format!("max {:.3} ms; {} not refused", p.max_ms, p.not_refused),
            pass: p.max_ms < 1000.0 && p.not_refused == 0,
        },
        Goal {
            goal: "quorum lost: UNAVAILABLE and NOT_SERVING within max_staleness_ms + 1 s (2 s)".into(),
            measured: format!("{:.0} ms and {:.0} ms", f.unavailable_after_ms, f.not_serving_after_ms),
            pass: f.unavailable_after_ms < 2000.0 && f.not_serving_after_ms < 2000.0,
        },
        Goal {
            goal: "no VALID from a node that failed closed".into(),
            measured: format!("{valid_held} VALID in {held} calls"),
            pass: valid_held == 0 && held > 0,
        },
        Goal {
            goal: "quorum back: VALID and SERVING within 5 s, no restart".into(),
            measured: format!("{:.0} ms and {:.0} ms", f.valid_again_after_ms, f.serving_again_after_ms),
            pass: f.valid_again_after_ms < 5000.0 && f.serving_again_after_ms < 5000.0,
        },
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stats(per_sec: f64) -> Stats {
        Stats { calls: per_sec as u64, elapsed_s: 1.0, calls_per_sec: per_sec, ..Default::default() }
    }

    fn report(verify_cluster: f64, propagation_ms: &[u32], held: &[(&str, u64)]) -> ClusterReport {
        let latencies = propagation_ms.iter().map(|ms| ms * 1000).collect();
        let figures = Figures::new(latencies, 0, Duration::from_secs(1));
        let cycle = |unavailable, serving_again| FailClosedCycle {
            unavailable_after_ms: unavailable,
            not_serving_after_ms: 1100.0,
            valid_again_after_ms: 300.0,
            serving_again_after_ms: serving_again,
        };
        let fail_closed = FailClosed::new(
            2,
            3,
            vec![cycle(900.0, 400.0), cycle(700.0, 4500.0)],
            500.0,
            held.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            2.0,
        );
        let settings = ClusterSettings {
            nodes: 3,
            etcd_members: 3,
            concurrency: 16,
            connections: 4,
            seconds: 1.0,
            revocations: propagation_ms.len(),
            pollers: 4,
            fail_cycles: 2,
            quick: true,
        };
        let machine = Machine { cores: 2, cpu_model: "test".into(), keyward_version: "0".into() };
        ClusterReport::new(
            machine,
            settings,
            (stats(1000.0), stats(verify_cluster)),
            (stats(100.0), stats(60.0)),
            (stats(100.0), stats(40.0)),
            Propagation::new(&figures, 4, 0.5, [("REVOKED".to_string(), propagation_ms.len() as u64)].into()),
            fail_closed,
        )
    }

    fn goal<'a>(r: &'a ClusterReport, starts: &str) -> &'a Goal {
        r.goals.iter().find(|g| g.goal.starts_with(starts)).unwrap_or_else(|| panic!("no goal {starts}"))
    }

    #[test]
    fn ratios_are_cluster_over_single_and_goals_follow_them() {
        let r = report(950.0, &[10, 20, 30], &[("UNAVAILABLE", 10)]);
        assert!((r.verify.cluster_pct_of_single - 95.0).abs() < 1e-9);
        assert!(goal(&r, "VerifyKey on a cluster node").pass);
        assert!(goal(&r, "CreateKey").pass, "60 % of single");
        assert!(!goal(&r, "RevokeKey").pass, "40 % of single");
        assert!(!goal(&report(850.0, &[10], &[("UNAVAILABLE", 1)]), "VerifyKey on a cluster node").pass);
    }

    #[test]
    fn propagation_goals_are_on_p99_and_max() {
        let fast = report(1000.0, &[5; 100], &[("UNAVAILABLE", 1)]);
        assert!(goal(&fast, "revocation propagation p99").pass && goal(&fast, "revocation propagation max").pass);
        let mut slow = vec![5; 98];
        slow.extend([300, 1200]);
        let slow = report(1000.0, &slow, &[("UNAVAILABLE", 1)]);
        assert!(!goal(&slow, "revocation propagation p99").pass, "p99 300 ms");
        assert!(!goal(&slow, "revocation propagation max").pass, "max 1.2 s");
        assert_eq!(slow.propagation.max_ms, 1200.0);
    }

    #[test]
    fn a_valid_answer_while_failed_closed_misses_its_goal() {
        let r = report(1000.0, &[5], &[("UNAVAILABLE", 10), ("VALID", 1)]);
        assert!(!goal(&r, "no VALID").pass);
        assert!(goal(&r, "quorum lost").pass && goal(&r, "quorum back").pass);
    }

    #[test]
    fn markdown_and_json_carry_every_figure() {
        let r = report(950.0, &[10, 20], &[("UNAVAILABLE", 10)]);
        let md = r.markdown();
        for text in ["| VerifyKey | 1000 | 950 | 95.0 %", "REVOKED=2", "UNAVAILABLE=10", "PASS VerifyKey"] {
            assert!(md.contains(text), "{text} missing in\n{md}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["verify"]["cluster"]["calls_per_sec"], 950.0);
        assert_eq!(json["propagation"]["max_ms"], 20.0);
        assert_eq!(json["fail_closed"]["unavailable_after_ms"], 900.0, "the slowest cycle");
        assert_eq!(json["fail_closed"]["cycles"][1]["unavailable_after_ms"], 700.0);
        assert!(md.contains("| slowest | 900 ms | 1100 ms | 300 ms | 4500 ms |"), "{md}");
        assert_eq!(json["goals"].as_array().map(Vec::len), Some(8));
    }
}
