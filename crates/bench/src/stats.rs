//! Percentiles of measured samples, and the per-round figures every round-based benchmark
//! records, prints and writes as JSON in one shape (which `cloister-bench compare` reads).

use std::time::Duration;

use serde_json::{Map, Value, json};

/// The sample at the `p`-th percentile of `sorted` (ascending): the one nearest to rank
/// `p/100 × (n − 1)`, so `p = 0` is the minimum, `p = 100` the maximum and `p = 50` the median
/// (the upper one of an even count). `None` when there are no samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let rank = ((p / 100.0).clamp(0.0, 1.0) * last as f64).round() as usize;
    sorted.get(rank.min(last)).copied()
}

/// Milliseconds, the unit every table prints.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of per-round values with their range, as the round-based benchmarks print them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (the upper one of an even count, as [`percentile`] picks it).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`, in any order; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            median: percentile(&sorted, 50.0)?,
            min: *sorted.first()?,
            max: *sorted.last()?,
        })
    }
}

/// Which way a figure gets better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Times, ratios to a floor, memory, instructions.
    Lower,
    /// Rates and shares of a floor.
    Higher,
}

impl Better {
    /// The direction a unit implies: rates (`…/s`) and percentages of a floor are better higher,
    /// everything else the benchmarks print (ms, ×, MiB, instructions) better lower.
    pub fn of_unit(unit: &str) -> Self {
        if unit.ends_with("/s") || unit == "%" {
            Self::Higher
        } else {
            Self::Lower
        }
    }

    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lower => "lower",
            Self::Higher => "higher",
        }
    }
}

/// One measured quantity: one value per round.
pub struct Metric {
    /// The stable name JSON files and `compare` know it by.
    pub key: String,
    /// What the table prints.
    pub label: String,
    /// The unit of every value.
    pub unit: &'static str,
    /// A floor measures the machine, not Cloister: when it moves, the machine changed, and
    /// `compare` reports it without calling it a regression.
    pub floor: bool,
    /// The values, one per round, in round order.
    pub values: Vec<f64>,
}

/// Every quantity of a run, in the order the table prints them.
#[derive(Default)]
pub struct Metrics(Vec<Metric>);

impl Metrics {
    /// Adds one round's value of a figure of the measured path.
    pub fn record(
        &mut self,
        key: impl Into<String>,
        label: impl Into<String>,
        unit: &'static str,
        value: f64,
    ) {
        self.push(key.into(), label, unit, false, value);
    }

    /// Adds one round's value of a floor (see [`Metric::floor`]).
    pub fn record_floor(
        &mut self,
        key: impl Into<String>,
        label: impl Into<String>,
        unit: &'static str,
        value: f64,
    ) {
        self.push(key.into(), label, unit, true, value);
    }

    fn push(&mut self, key: String, label: impl Into<String>, unit: &'static str, floor: bool, value: f64) {
        match self.0.iter_mut().find(|m| m.key == key) {
            Some(metric) => metric.values.push(value),
            None => self.0.push(Metric {
                key,
                label: label.into(),
                unit,
                floor,
                values: vec![value],
            }),
        }
    }

    /// The median and range of a figure's rounds.
    pub fn spread(&self, key: &str) -> Option<Spread> {
        self.0
            .iter()
            .find(|m| m.key == key)
            .and_then(|m| Spread::of(&m.values))
    }

    /// The median of a figure's rounds.
    pub fn median(&self, key: &str) -> Option<f64> {
        self.spread(key).map(|s| s.median)
    }

    /// The `measures` object of the JSON output: per figure its unit, direction, whether it is
    /// a floor, median, min, max and every round's value.
    pub fn to_json(&self) -> Value {
        let mut measures = Map::new();
        for metric in &self.0 {
            if let Some(spread) = Spread::of(&metric.values) {
                measures.insert(
                    metric.key.clone(),
                    json!({"label": metric.label.trim(), "unit": metric.unit,
                        "better": Better::of_unit(metric.unit).as_str(), "floor": metric.floor,
                        "median": spread.median, "min": spread.min, "max": spread.max,
                        "rounds": metric.values}),
                );
            }
        }
        Value::Object(measures)
    }

    /// Prints the table: per figure the median of the rounds and their range.
    pub fn print_table(&self) {
        println!("{:<48} {:>16} {:>24}", "measure", "median", "min–max");
        for metric in &self.0 {
            if let Some(spread) = Spread::of(&metric.values) {
                let digits = if spread.median.abs() >= 100.0 { 0 } else { 2 };
                println!(
                    "{:<48} {:>16} {:>24}",
                    metric.label,
                    format!("{:.digits$} {}", spread.median, metric.unit),
                    format!("{:.digits$}–{:.digits$}", spread.min, spread.max),
                );
            }
        }
    }
}

/// A target of the issues, judged on the medians.
pub struct Target {
    /// What is asked, with the measured median.
    pub text: String,
    /// Whether the median meets it.
    pub met: bool,
}

impl Target {
    /// Prints the targets under a table.
    pub fn print_all(targets: &[Target]) {
        for target in targets {
            println!(
                "target: {:<64} {}",
                target.text,
                if target.met { "met" } else { "MISSED" }
            );
        }
    }

    /// The `targets` array of the JSON output.
    pub fn to_json(targets: &[Target]) -> Value {
        targets
            .iter()
            .map(|t| json!({"target": t.text, "met": t.met}))
            .collect()
    }
}

/// Refuses a count argument of 0, naming its flag.
pub fn require_at_least_one(counts: &[(usize, &str)]) -> anyhow::Result<()> {
    for (value, flag) in counts {
        anyhow::ensure!(*value >= 1, "{flag} must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        assert_eq!(percentile::<u32>(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let samples: Vec<u32> = (1..=20).collect();
        assert_eq!(percentile(&samples, 0.0), Some(1));
        assert_eq!(
            percentile(&samples, 50.0),
            Some(11),
            "the upper median of an even count"
        );
        assert_eq!(percentile(&samples, 99.0), Some(20));
        assert_eq!(percentile(&samples, 100.0), Some(20));
        let odd: Vec<u32> = (1..=9).collect();
        assert_eq!(percentile(&odd, 50.0), Some(5));
        let many: Vec<u32> = (0..1000).collect();
        assert_eq!(percentile(&many, 99.0), Some(989));
    }

    #[test]
    fn spread_is_the_median_and_range_of_unsorted_rounds() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        let one = Spread::of(&[4.5]).unwrap();
        assert_eq!((one.median, one.min, one.max), (4.5, 4.5, 4.5));
    }

    #[test]
    fn metrics_keep_every_round_and_their_direction() {
        let mut metrics = Metrics::default();
        for (floor, rate) in [(1.0, 300.0), (3.0, 500.0), (2.0, 400.0)] {
            metrics.record_floor("floor_ms", "floor", "ms", floor);
            metrics.record("rate", "rate", "jobs/s", rate);
        }
        assert_eq!(metrics.median("rate"), Some(400.0));
        let json = metrics.to_json();
        assert_eq!(json["floor_ms"]["rounds"], json!([1.0, 3.0, 2.0]));
        assert_eq!(json["floor_ms"]["floor"], true);
        assert_eq!(json["floor_ms"]["better"], "lower");
        assert_eq!(json["rate"]["floor"], false);
        assert_eq!(json["rate"]["better"], "higher");
        assert_eq!(
            (json["rate"]["min"].as_f64(), json["rate"]["max"].as_f64()),
            (Some(300.0), Some(500.0))
        );
        assert_eq!(Better::of_unit("%"), Better::Higher);
        assert_eq!(Better::of_unit("×"), Better::Lower);
        assert_eq!(Better::of_unit("instructions"), Better::Lower);
    }
}
