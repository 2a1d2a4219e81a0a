//! `cloister-bench` keeps working: short `jobs`, `confidential`, `cas` and `governance` runs against the real
//! `cloister` (every round in their JSON), and `compare` of a run against itself and against
//! doctored copies, with its exit codes. No timing is asserted: the machine running the tests is not quiet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Output;

use common::{bench_bin, bin, runtime_bin};
use serde_json::Value;

/// `compare`'s exit code when a figure regressed beyond its spread.
const REGRESSED: i32 = 11;

fn bench(args: &[&str]) -> Output {
    std::process::Command::new(bench_bin())
        .args(args)
        .output()
        .expect("run cloister-bench")
}

fn compare(baseline: &Path, current: &Path) -> (Output, Value) {
    let out = bench(&[
        "compare",
        baseline.to_str().unwrap(),
        current.to_str().unwrap(),
        "--json",
    ]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

/// A copy of `run` in which every round of the figure `key` gave `factor` times its largest
/// value (`factor` > 1) or its smallest (`factor` < 1): a run that moved that far, steadily.
fn doctored(run: &Value, key: &str, factor: f64) -> Value {
    let mut run = run.clone();
    let figure = &mut run["measures"][key];
    assert!(figure.is_object(), "no figure {key}");
    let edge = figure[if factor > 1.0 { "max" } else { "min" }].as_f64().unwrap();
    let value = edge * factor;
    for field in ["median", "min", "max"] {
        figure[field] = value.into();
    }
    let rounds = figure["rounds"].as_array().unwrap().len();
    figure["rounds"] = vec![value; rounds].into();
    run
}

fn verdict<'a>(report: &'a Value, key: &str) -> &'a str {
    report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == key)
        .and_then(|f| f["verdict"].as_str())
        .unwrap_or_else(|| panic!("no verdict for {key}: {report}"))
}

#[test]
fn a_short_jobs_run_compares_steady_with_itself_and_regressed_with_a_worse_copy() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&[
        "jobs",
        "--cloister-bin",
        bin(),
        "--rounds",
        "2",
        "--spawns",
        "5",
        "--latency-jobs",
        "3",
        "--throughput-jobs",
        "10",
        "--runs",
        "3",
        "--stages",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["command"], "jobs", "{run}");
    assert_eq!(run["rounds"], 2, "{run}");
    let measures = run["measures"].as_object().unwrap();
    for key in [
        "spawn_floor_p50_ms",
        "job_start_p50_ms",
        "job_start_over_floor",
        "jobs_per_s",
        "run_p50_ms",
        "run_minus_floor_ms",
        // The server's own stage timings of each round's uploads.
        "stage_data_p50_ms",
        "stage_commit_p50_ms",
        "stage_jobs_p50_ms",
        "stage_prepare_p50_ms",
        "stage_spawn_p50_ms",
    ] {
        let rounds = measures[key]["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{key}: one value per round: {run}");
        assert!(rounds.iter().all(Value::is_f64), "{key}: {run}");
    }
    assert_eq!(measures["spawn_floor_p50_ms"]["floor"], true);
    assert_eq!(measures["jobs_per_s"]["better"], "higher");
    assert!(
        run["instructions"].is_null(),
        "instructions are counted only when asked"
    );
    assert_eq!(run["targets"].as_array().unwrap().len(), 3, "{run}");

    let baseline = dir.path().join("baseline.json");
    std::fs::write(&baseline, &out.stdout).unwrap();
    let (same, report) = compare(&baseline, &baseline);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    assert_eq!(report["regressed"], serde_json::json!([]), "{report}");
    assert!(
        report["figures"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["verdict"] == "steady"),
        "{report}"
    );

    let current = dir.path().join("current.json");
    for (key, factor, code, expected) in [
        // Slower job starts and fewer jobs per second are regressions.
        ("job_start_p50_ms", 10.0, REGRESSED, "REGRESSED"),
        ("jobs_per_s", 0.1, REGRESSED, "REGRESSED"),
        // The same moves the other way are improvements, and a slower floor is the machine.
        ("job_start_p50_ms", 0.1, 0, "improved"),
        ("jobs_per_s", 10.0, 0, "improved"),
        ("spawn_floor_p50_ms", 10.0, 0, "floor moved"),
    ] {
        std::fs::write(&current, doctored(&run, key, factor).to_string()).unwrap();
        let (out, report) = compare(&baseline, &current);
        assert_eq!(out.status.code(), Some(code), "{key} ×{factor}: {out:?}");
        assert_eq!(verdict(&report, key), expected, "{key} ×{factor}: {report}");
        if code == REGRESSED {
            assert_eq!(report["regressed"], serde_json::json!([key]), "{report}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(key), "{stderr}");
        }
    }

    // Not a benchmark's output, or another benchmark's: refused, not judged.
    std::fs::write(&current, "{\"measures\": 3}").unwrap();
    assert_eq!(compare(&baseline, &current).0.status.code(), Some(1));
    let mut other = run.clone();
    other["command"] = "s3".into();
    std::fs::write(&current, other.to_string()).unwrap();
    assert_eq!(compare(&baseline, &current).0.status.code(), Some(1));
}

#[test]
fn a_short_confidential_run_has_every_round_of_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime_bin();
    let out = bench(&[
        "confidential",
        "--cloister-bin",
        bin(),
        "--runtime-bin",
        runtime.to_str().unwrap(),
        "--rounds",
        "2",
        "--small-jobs",
        "1",
        "--large-jobs",
        "1",
        "--large-mib",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["command"], "confidential", "{run}");
    let measures = run["measures"].as_object().unwrap();
    for size in ["small", "large"] {
        for workload in ["copy", "transform"] {
            for what in ["plain_ms", "confidential_ms", "ratio"] {
                let key = format!("{size}_{workload}_{what}");
                let rounds = measures[&key]["rounds"].as_array().unwrap();
                assert_eq!(rounds.len(), 2, "{key}: {run}");
            }
        }
    }
    assert_eq!(
        measures["attestation_p50_ms"]["rounds"].as_array().unwrap().len(),
        2,
        "every round's confidential jobs attested: {run}"
    );
    assert_eq!(run["attestations"], 8, "one per confidential job: {run}");
    let file = dir.path().join("confidential.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let (same, report) = compare(&file, &file);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    assert_eq!(report["regressed"], serde_json::json!([]), "{report}");
}

#[test]
fn a_short_cas_run_has_every_round_of_both_loads_and_the_flood() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&[
        "cas",
        "--cloister-bin",
        bin(),
        "--rounds",
        "2",
        "--attestations",
        "40",
        "--clients",
        "4",
        "--connections",
        "4",
        "--rate",
        "200",
        "--dcap",
        "4",
        "--reads",
        "3",
        "--increments",
        "20",
        "--flood",
        "--flood-clients",
        "1",
        "--junk-clients",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["command"], "cas", "{run}");
    let measures = run["measures"].as_object().unwrap();
    for key in [
        "closed_per_s",
        "closed_p99_ms",
        "open_per_s",
        "open_p50_ms",
        "open_p99_ms",
        "flood_closed_per_s",
        "flood_open_p99_ms",
        "flood_nonces_per_s",
        "flood_junk_refused_per_s",
        "secret_read_p50_ms",
        "counter_per_s",
        "counter_p99_ms",
        "counter_one_per_s",
        "fsync_floor_p50_ms",
        "dcap_cached_per_s",
        "dcap_dcap_qvl_per_s",
    ] {
        let rounds = measures[key]["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{key}: one value per round: {run}");
        assert!(rounds.iter().all(|v| v.as_f64().unwrap() > 0.0), "{key}: {run}");
    }
    assert_eq!(measures["flood_errors"]["median"], 0.0, "{run}");
    // The junk the flood sent was refused and audited, within bounds.
    let audit = &run["refusal_audit"];
    assert!(audit["refusals"].as_u64().unwrap() > 0, "{run}");
    assert!(audit["entries"].as_u64().unwrap() >= 1, "{run}");
    assert_eq!(run["targets"].as_array().unwrap().len(), 2, "{run}");

    let file = dir.path().join("cas.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let (same, report) = compare(&file, &file);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    assert_eq!(report["regressed"], serde_json::json!([]), "{report}");
}

#[test]
fn a_short_governance_run_has_every_round_of_each_board() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&[
        "governance",
        "--cloister-bin",
        bin(),
        "--rounds",
        "2",
        "--changes",
        "2",
        "--board",
        "2,3",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["command"], "governance", "{run}");
    let measures = run["measures"].as_object().unwrap();
    for n in [2, 3] {
        for figure in ["change_ms", "propose_ms", "approve_ms", "apply_ms"] {
            let key = format!("n{n}_{figure}_p50");
            let rounds = measures[&key]["rounds"].as_array().unwrap();
            assert_eq!(rounds.len(), 2, "{key}: one value per round: {run}");
            assert!(rounds.iter().all(|v| v.as_f64().unwrap() > 0.0), "{key}: {run}");
        }
    }
    let file = dir.path().join("governance.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let (same, report) = compare(&file, &file);
    assert_eq!(same.status.code(), Some(0), "{same:?}");
    assert_eq!(report["regressed"], serde_json::json!([]), "{report}");
}
