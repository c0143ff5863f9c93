//! `Figures`: the latencies and throughput of one run, and the per-worker samples they are made
//! from.

use std::time::{Duration, Instant};

/// Latency percentiles and throughput of one run.
pub struct Figures {
    pub calls: usize,
    pub errors: usize,
    pub elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Figures {
    pub fn new(mut latencies_us: Vec<u32>, errors: usize, elapsed: Duration) -> Self {
        latencies_us.sort_unstable();
        Self { calls: latencies_us.len(), errors, elapsed, latencies_us }
    }

    /// Several runs as one: calls and time add up.
    pub fn combine(runs: Vec<Figures>) -> Self {
        let elapsed = runs.iter().map(|f| f.elapsed).sum();
        let errors = runs.iter().map(|f| f.errors).sum();
        Self::new(runs.into_iter().flat_map(|f| f.latencies_us).collect(), errors, elapsed)
    }

    pub fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    pub fn report(&self, what: &str) -> String {
        format!(
            "{what}: {} calls in {:.1} s = {:.0}/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; errors {}",
            self.calls,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.quantile_ms(1.0),
            self.errors
        )
    }
}

/// A latency in whole microseconds, saturated at `u32::MAX`.
pub(crate) fn micros(latency: Duration) -> u32 {
    latency.as_micros().min(u128::from(u32::MAX)) as u32
}

/// One worker's latencies (µs) of successful calls, and its failed calls.
#[derive(Default)]
pub(crate) struct Samples {
    latencies_us: Vec<u32>,
    errors: usize,
}

impl Samples {
    pub(crate) fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            self.latencies_us.push(micros(started.elapsed()));
        } else {
            self.errors += 1;
        }
    }
}

/// The workers' samples as one run of `elapsed`.
pub(crate) fn merge(parts: impl IntoIterator<Item = Samples>, elapsed: Duration) -> Figures {
    let (mut all, mut errors) = (Vec::new(), 0);
    for part in parts {
        all.extend(part.latencies_us);
        errors += part.errors;
    }
    Figures::new(all, errors, elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rates_come_from_the_recorded_latencies() {
        let parts = [
            Samples { latencies_us: (51..=100).rev().map(|ms| ms * 1000).collect(), errors: 1 },
            Samples { latencies_us: (1..=50).map(|ms| ms * 1000).collect(), errors: 2 },
        ];
        let f = merge(parts, Duration::from_secs(4));
        assert_eq!((f.calls, f.errors), (100, 3));
        assert_eq!(f.per_second(), 25.0);
        assert_eq!(f.quantile_ms(0.0), 1.0);
        assert_eq!(f.quantile_ms(0.5), 51.0);
        assert_eq!(f.quantile_ms(0.99), 99.0);
        assert_eq!(f.quantile_ms(1.0), 100.0);
        assert!(merge([], Duration::from_secs(1)).quantile_ms(0.5).is_nan());
    }
}
