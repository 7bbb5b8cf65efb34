//! The Prometheus text exposition format, written directly: each binary keeps its counters
//! in atomics on its own structures and renders them on scrape.
//!
//! Why not `prometheus-client`: its labelled families look a label set up in a map behind a
//! lock on every observation, and its histogram takes a lock per observation, shared by
//! every worker thread. Our counters live where the request path already is (a member's
//! state, a listener's stats), as plain atomics, so a request touches no lock and no map;
//! what is left to write is the text format below, which is small and tested.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency histograms, in seconds: from a loopback exchange (0.5 ms)
/// to the default response timeout (60 s), roughly ×2.5 apart.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`], lock-free: an observation is two or
/// three relaxed atomic additions.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// The sum of all observations, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(micros, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The `q` quantile (0 to 1) of every observation so far, estimated as Prometheus'
    /// `histogram_quantile` does: linearly within the bucket it falls in (so it is as
    /// precise as the buckets, about ×2.5). Above the last bound, that bound. `None`
    /// before the first observation.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, count) in counts.iter().enumerate() {
            let through = below + count;
            if *count > 0 && through as f64 >= rank {
                let Some(upper) = LATENCY_BUCKETS.get(i) else {
                    return Some(Duration::from_secs_f64(
                        LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1],
                    ));
                };
                let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
                let within = (rank - below as f64) / *count as f64;
                return Some(Duration::from_secs_f64(lower + (upper - lower) * within));
            }
            below = through;
        }
        None
    }
}

#[cfg(test)]
mod quantile_tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_bucket_of_their_rank() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..98 {
            h.observe(Duration::from_micros(700)); // (0.5 ms, 1 ms]
        }
        h.observe(Duration::from_millis(200)); // (100 ms, 250 ms]
        h.observe(Duration::from_secs(100)); // above 60 s
        let p50 = h.quantile(0.5).unwrap();
        assert!(
            p50 > Duration::from_micros(500) && p50 <= Duration::from_millis(1),
            "{p50:?}"
        );
        let p99 = h.quantile(0.99).unwrap();
        assert!(
            p99 > Duration::from_millis(100) && p99 <= Duration::from_millis(250),
            "{p99:?}"
        );
        assert_eq!(h.quantile(1.0), Some(Duration::from_secs(60)));
    }
}

/// A scrape response being written.
#[derive(Default)]
pub struct PromText {
    out: String,
}

impl PromText {
    /// `# HELP` and `# TYPE` lines for a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample; label values are escaped as the format requires.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram (the family is written
    /// with [`PromText::family`] and kind `histogram`).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) -> &mut Self {
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let mut cumulative = 0;
        let bounds: Vec<String> = LATENCY_BUCKETS.iter().map(ToString::to_string).collect();
        for (i, counter) in histogram.buckets.iter().enumerate() {
            cumulative += counter.load(Relaxed);
            with_le.truncate(labels.len());
            with_le.push(("le", bounds.get(i).map_or("+Inf", String::as_str)));
            self.sample(&bucket, &with_le, cumulative);
        }
        let sum = histogram.sum_us.load(Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_and_escapes_labels() {
        let mut text = PromText::default();
        text.single("up", "gauge", "Whether it runs.", 1);
        text.family("req_total", "counter", "Requests.")
            .sample("req_total", &[("route", "www1")], 3)
            .sample("req_total", &[("route", "a\"b\\c\nd"), ("x", "y")], 4);
        assert_eq!(
            text.finish(),
            "# HELP up Whether it runs.\n# TYPE up gauge\nup 1\n\
             # HELP req_total Requests.\n# TYPE req_total counter\n\
             req_total{route=\"www1\"} 3\nreq_total{route=\"a\\\"b\\\\c\\nd\",x=\"y\"} 4\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_millis(2));
        histogram.observe(Duration::from_secs(100));
        let mut text = PromText::default();
        text.histogram("t_seconds", &[("route", "a")], &histogram);
        let text = text.finish();
        assert!(
            text.contains("t_seconds_bucket{route=\"a\",le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{route=\"a\",le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{route=\"a\",le=\"0.0025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{route=\"a\",le=\"60\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{route=\"a\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_sum{route=\"a\"} 100.0023\n"),
            "{text}"
        );
        assert!(text.contains("t_seconds_count{route=\"a\"} 3\n"), "{text}");
        assert_eq!(histogram.count(), 3);
    }
}
