//! Request counters and a latency histogram, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (bound, c) in BUCKETS.iter().zip(&self.counts) {
            if s <= *bound {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        use std::fmt::Write;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Everything /metrics reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (route, status) → count.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Whole-request latency of POST /search.
    search_latency: Histogram,
    /// Per pipeline stage (seconds, successful searches only).
    encode: Histogram,
    candidates: Histogram,
    /// encode + candidates: everything before a re-ranker.
    first_stage: Histogram,
    /// The cross-encoder re-scoring the top-K (only searches with a re-ranker).
    rerank: Histogram,
    /// Whole-request latency of POST /search/image.
    photo_latency: Histogram,
    /// Search by photo: decode + detector, the image tower, the dot products.
    detector: Histogram,
    image_encode: Histogram,
    photo_candidates: Histogram,
    in_flight: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, route: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_default() += 1;
        }
    }

    pub fn observe_search(&self, d: Duration) {
        self.search_latency.observe(d);
    }

    pub fn observe_stages(&self, encode_ms: f64, candidates_ms: f64) {
        self.encode
            .observe(Duration::from_secs_f64(encode_ms / 1e3));
        self.candidates
            .observe(Duration::from_secs_f64(candidates_ms / 1e3));
        self.first_stage
            .observe(Duration::from_secs_f64((encode_ms + candidates_ms) / 1e3));
    }

    /// Time the re-ranker took for one search (milliseconds).
    pub fn observe_rerank(&self, rerank_ms: f64) {
        self.rerank
            .observe(Duration::from_secs_f64(rerank_ms / 1e3));
    }

    pub fn observe_photo_search(&self, d: Duration) {
        self.photo_latency.observe(d);
    }

    /// Stage times of one successful photo search (milliseconds).
    pub fn observe_photo(&self, detector_ms: f64, encode_ms: f64, candidates_ms: f64) {
        let s = |ms: f64| Duration::from_secs_f64(ms / 1e3);
        self.detector.observe(s(detector_ms));
        self.image_encode.observe(s(encode_ms));
        self.photo_candidates.observe(s(candidates_ms));
    }

    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        out.push_str(
            "# HELP lightningdot_http_requests_total HTTP requests by route and status.\n",
        );
        out.push_str("# TYPE lightningdot_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "lightningdot_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP lightningdot_search_duration_seconds POST /search latency (all outcomes).\n",
        );
        out.push_str("# TYPE lightningdot_search_duration_seconds histogram\n");
        self.search_latency
            .render("lightningdot_search_duration_seconds", "", &mut out);
        out.push_str("# HELP lightningdot_stage_duration_seconds Pipeline stage time of successful searches.\n");
        out.push_str("# TYPE lightningdot_stage_duration_seconds histogram\n");
        self.encode.render(
            "lightningdot_stage_duration_seconds",
            "stage=\"encode\"",
            &mut out,
        );
        self.candidates.render(
            "lightningdot_stage_duration_seconds",
            "stage=\"candidates\"",
            &mut out,
        );
        self.first_stage.render(
            "lightningdot_stage_duration_seconds",
            "stage=\"first_stage\"",
            &mut out,
        );
        self.rerank.render(
            "lightningdot_stage_duration_seconds",
            "stage=\"rerank\"",
            &mut out,
        );
        for (stage, h) in [
            ("detector", &self.detector),
            ("image_encode", &self.image_encode),
            ("photo_candidates", &self.photo_candidates),
        ] {
            h.render(
                "lightningdot_stage_duration_seconds",
                &format!("stage=\"{stage}\""),
                &mut out,
            );
        }
        out.push_str(
            "# HELP lightningdot_photo_search_duration_seconds POST /search/image latency (all outcomes).\n",
        );
        out.push_str("# TYPE lightningdot_photo_search_duration_seconds histogram\n");
        self.photo_latency
            .render("lightningdot_photo_search_duration_seconds", "", &mut out);
        out.push_str("# HELP lightningdot_searches_in_flight Searches being answered now.\n");
        out.push_str("# TYPE lightningdot_searches_in_flight gauge\n");
        let _ = writeln!(
            out,
            "lightningdot_searches_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let m = Metrics::default();
        m.record_request("/search", 200);
        m.record_request("/search", 200);
        m.record_request("/search", 400);
        m.observe_search(Duration::from_millis(3));
        m.observe_search(Duration::from_millis(30));
        let text = m.render();
        assert!(
            text.contains("lightningdot_http_requests_total{route=\"/search\",status=\"200\"} 2")
        );
        assert!(text.contains("lightningdot_search_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("lightningdot_search_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("lightningdot_search_duration_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("lightningdot_search_duration_seconds_count 2"));
    }
}
