//! Small helpers the benchmark binaries share.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Median, 90th percentile, minimum and maximum of `samples` (sorted in place).
pub struct Summary {
    pub median: Duration,
    pub p90: Duration,
    pub min: Duration,
    pub max: Duration,
}

pub fn summarize(samples: &mut [Duration]) -> Option<Summary> {
    samples.sort();
    let n = samples.len();
    let at = |q: f64| samples[((n as f64 - 1.0) * q).round() as usize];
    (n > 0).then(|| Summary {
        median: at(0.5),
        p90: at(0.9),
        min: samples[0],
        max: samples[n - 1],
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:.1} ms, p90 {:.1} ms, min {:.1} ms, max {:.1} ms",
            ms(self.median),
            ms(self.p90),
            ms(self.min),
            ms(self.max)
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
