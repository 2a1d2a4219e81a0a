//! `cloister-bench compare BASELINE.json CURRENT.json`: the figures of two runs of one benchmark
//! (the `--json` output of `jobs`, `confidential` or `s3`) side by side, and which moved beyond
//! their spread.
//!
//! A figure moved when the current median lies outside the baseline's min–max widened on both
//! sides by the current run's own spread (max − min) and by `--tolerance` percent of the
//! baseline median: the rounds of each run show how far the machine alone moves a figure, and
//! the tolerance covers figures with a single round (instruction counts), which have no spread.
//! A figure of the measured path that moved the worse way regressed; a floor that moved says the
//! machine changed, not Cloister, and is reported without failing.

use std::path::PathBuf;

use anyhow::Context;
use cloister_cli::client::fail;
use serde_json::{Value, json};

use crate::stats::Better;

/// The exit code when at least one figure regressed beyond its spread.
pub const REGRESSED: i32 = 11;

/// The two runs to compare.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The baseline: the `--json` output of an earlier run.
    pub baseline: PathBuf,
    /// The current run's `--json` output, of the same benchmark.
    pub current: PathBuf,
    /// A figure also moved only beyond this percentage of the baseline median.
    #[arg(long, default_value_t = 2.0, value_name = "PERCENT")]
    pub tolerance: f64,
}

/// One figure of a run, as its JSON has it.
#[derive(Debug, Clone, PartialEq)]
struct Figure {
    label: String,
    unit: String,
    better: Better,
    floor: bool,
    median: f64,
    min: f64,
    max: f64,
}

/// What happened to a figure between the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Within the baseline's range widened by the current spread and the tolerance.
    Steady,
    /// Moved the better way.
    Improved,
    /// Moved the worse way.
    Regressed,
    /// A floor moved: the machine, not Cloister.
    MachineMoved,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::Improved => "improved",
            Self::Regressed => "REGRESSED",
            Self::MachineMoved => "floor moved",
        }
    }
}

pub fn run(args: CompareArgs, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tolerance.is_finite() && args.tolerance >= 0.0,
        "--tolerance must be a percentage of at least 0"
    );
    let baseline = read_run(&args.baseline)?;
    let current = read_run(&args.current)?;
    if let (Some(a), Some(b)) = (baseline["command"].as_str(), current["command"].as_str()) {
        anyhow::ensure!(a == b, "the baseline is a `{a}` run, the current one a `{b}` run");
    }
    let mut notes = Vec::new();
    for field in ["rounds", "parameters"] {
        if baseline[field] != current[field] {
            notes.push(format!(
                "the runs differ in {field} (baseline {}, current {}): their figures may differ for that alone",
                baseline[field], current[field]
            ));
        }
    }
    let base = figures(&baseline).with_context(|| format!("in {}", args.baseline.display()))?;
    let now = figures(&current).with_context(|| format!("in {}", args.current.display()))?;

    let mut rows = Vec::new();
    for (key, b) in &base {
        match now.iter().find(|(k, _)| k == key) {
            Some((_, c)) if c.unit != b.unit => notes.push(format!(
                "{key}: the unit changed ({} → {}), not compared",
                b.unit, c.unit
            )),
            Some((_, c)) => rows.push((key.clone(), b.clone(), c.clone(), judge(b, c, args.tolerance))),
            None => notes.push(format!("{key}: only in the baseline")),
        }
    }
    for (key, _) in now.iter().filter(|(k, _)| !base.iter().any(|(b, _)| b == k)) {
        notes.push(format!("{key}: only in the current run"));
    }
    anyhow::ensure!(!rows.is_empty(), "the two runs have no figure in common");
    let regressed: Vec<&str> = rows
        .iter()
        .filter(|row| row.3 == Verdict::Regressed)
        .map(|row| row.0.as_str())
        .collect();

    if json {
        let figures: Vec<Value> = rows
            .iter()
            .map(|(key, b, c, verdict)| {
                json!({"key": key, "label": b.label, "unit": b.unit, "floor": b.floor,
                    "baseline": {"median": b.median, "min": b.min, "max": b.max},
                    "current": {"median": c.median, "min": c.min, "max": c.max},
                    "verdict": verdict.as_str()})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "tolerance_percent": args.tolerance, "figures": figures, "notes": notes,
                "regressed": regressed,
            }))?
        );
    } else {
        println!(
            "{:<52} {:>26} {:>26} {:>8}  verdict",
            "figure", "baseline median (min–max)", "current median (min–max)", "change"
        );
        for (_, b, c, verdict) in &rows {
            let digits = if b.median.abs() >= 100.0 { 0 } else { 2 };
            let show = |f: &Figure| format!("{:.digits$} ({:.digits$}–{:.digits$})", f.median, f.min, f.max);
            let change = if b.median == 0.0 {
                "—".to_owned()
            } else {
                format!("{:+.1}%", 100.0 * (c.median - b.median) / b.median.abs())
            };
            println!(
                "{:<52} {:>26} {:>26} {change:>8}  {}",
                format!("{} ({})", b.label, b.unit),
                show(b),
                show(c),
                verdict.as_str()
            );
        }
        for note in &notes {
            println!("note: {note}");
        }
    }
    if regressed.is_empty() {
        Ok(())
    } else {
        Err(fail(
            REGRESSED,
            format!(
                "{} figure(s) regressed beyond their spread: {}",
                regressed.len(),
                regressed.join(", ")
            ),
        ))
    }
}

fn read_run(path: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not the JSON output of a benchmark", path.display()))
}

/// The `measures` of a run's JSON, each checked.
fn figures(run: &Value) -> anyhow::Result<Vec<(String, Figure)>> {
    let measures = run["measures"]
        .as_object()
        .context("no `measures`: not the --json output of a round-based benchmark")?;
    measures
        .iter()
        .map(|(key, m)| {
            let number = |field: &str| {
                m[field]
                    .as_f64()
                    .filter(|v| v.is_finite())
                    .with_context(|| format!("{key}: `{field}` is not a number"))
            };
            let unit = m["unit"].as_str().with_context(|| format!("{key}: no unit"))?;
            let better = match m["better"].as_str() {
                Some("lower") => Better::Lower,
                Some("higher") => Better::Higher,
                Some(other) => anyhow::bail!("{key}: `better` is {other:?}, not lower or higher"),
                None => Better::of_unit(unit),
            };
            let figure = Figure {
                label: m["label"].as_str().unwrap_or(key).to_owned(),
                unit: unit.to_owned(),
                better,
                floor: m["floor"].as_bool().unwrap_or(false),
                median: number("median")?,
                min: number("min")?,
                max: number("max")?,
            };
            anyhow::ensure!(
                figure.min <= figure.median && figure.median <= figure.max,
                "{key}: the median is outside min–max"
            );
            Ok((key.clone(), figure))
        })
        .collect()
}

/// Whether `current` moved beyond the baseline's range widened by its own spread and
/// `tolerance` percent of the baseline median, and which way.
fn judge(baseline: &Figure, current: &Figure, tolerance: f64) -> Verdict {
    let widen = (current.max - current.min) + tolerance / 100.0 * baseline.median.abs();
    let (low, high) = (baseline.min - widen, baseline.max + widen);
    if (low..=high).contains(&current.median) {
        return Verdict::Steady;
    }
    if baseline.floor {
        return Verdict::MachineMoved;
    }
    let worse = match baseline.better {
        Better::Lower => current.median > high,
        Better::Higher => current.median < low,
    };
    if worse {
        Verdict::Regressed
    } else {
        Verdict::Improved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(unit: &str, floor: bool, median: f64, min: f64, max: f64) -> Figure {
        Figure {
            label: "x".into(),
            unit: unit.into(),
            better: Better::of_unit(unit),
            floor,
            median,
            min,
            max,
        }
    }

    #[test]
    fn a_figure_moves_only_beyond_the_widened_range() {
        let base = figure("ms", false, 2.0, 1.5, 3.0);
        // Inside the baseline's range.
        assert_eq!(
            judge(&base, &figure("ms", false, 2.9, 2.8, 3.0), 0.0),
            Verdict::Steady
        );
        // Above it, but within the current run's own spread of 1 ms.
        assert_eq!(
            judge(&base, &figure("ms", false, 3.5, 3.0, 4.0), 0.0),
            Verdict::Steady
        );
        // Above it by more than the current spread: slower is worse.
        assert_eq!(
            judge(&base, &figure("ms", false, 3.6, 3.5, 3.7), 0.0),
            Verdict::Regressed
        );
        assert_eq!(
            judge(&base, &figure("ms", false, 1.0, 0.9, 1.1), 0.0),
            Verdict::Improved
        );
        // A rate that falls regressed; one that rises improved.
        let rate = figure("jobs/s", false, 400.0, 380.0, 420.0);
        assert_eq!(
            judge(&rate, &figure("jobs/s", false, 300.0, 290.0, 310.0), 0.0),
            Verdict::Regressed
        );
        assert_eq!(
            judge(&rate, &figure("jobs/s", false, 500.0, 490.0, 510.0), 0.0),
            Verdict::Improved
        );
        // A floor that moves is the machine.
        let floor = figure("ms", true, 0.6, 0.5, 0.7);
        assert_eq!(
            judge(&floor, &figure("ms", true, 2.0, 1.9, 2.1), 0.0),
            Verdict::MachineMoved
        );
    }

    #[test]
    fn the_tolerance_covers_single_round_figures() {
        let base = figure("instructions", false, 1_000_000.0, 1_000_000.0, 1_000_000.0);
        let near = figure("instructions", false, 1_015_000.0, 1_015_000.0, 1_015_000.0);
        assert_eq!(judge(&base, &near, 2.0), Verdict::Steady);
        assert_eq!(judge(&base, &near, 1.0), Verdict::Regressed);
    }

    #[test]
    fn malformed_measures_are_refused() {
        assert!(figures(&json!({"cpus": 2})).is_err(), "no measures");
        let good = json!({"measures": {"a": {"unit": "ms", "median": 2.0, "min": 1.0, "max": 3.0}}});
        let read = figures(&good).unwrap();
        assert_eq!(read[0].1.better, Better::Lower, "from the unit when not stated");
        assert!(!read[0].1.floor);
        for bad in [
            json!({"measures": {"a": {"unit": "ms", "median": "2", "min": 1.0, "max": 3.0}}}),
            json!({"measures": {"a": {"median": 2.0, "min": 1.0, "max": 3.0}}}),
            json!({"measures": {"a": {"unit": "ms", "median": 5.0, "min": 1.0, "max": 3.0}}}),
            json!({"measures": {"a": {"unit": "ms", "better": "up", "median": 2.0, "min": 1.0, "max": 3.0}}}),
        ] {
            assert!(figures(&bad).is_err(), "{bad}");
        }
    }
}
