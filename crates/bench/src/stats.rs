//! Percentiles of measured samples, one definition for every benchmark.

use std::time::Duration;

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
}
