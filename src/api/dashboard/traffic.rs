//! Traffic per slot over the last minutes, for the dashboard's charts. Once a second a sampler reads the engine
//! metrics (teal_requests_total by status, the TTFT and ITL histograms), sums them per slot, and keeps one point
//! per second: requests/s and errors/s (5xx) over the last WINDOW seconds, TTFT and ITL p50/p95 of what
//! finished in that window (from histogram bucket differences, as Prometheus' histogram_quantile does), and
//! each slot's share of new traffic (the rollout's split, else 100% to the live slot). HISTORY points are
//! kept, so a page opened mid-rollout shows the minutes before it.

#![deny(clippy::indexing_slicing)]

use crate::net::shutdown::{Phase, ShutdownSignal};
use crate::router::LiveRouter;
use crate::slot::SlotName;
use crate::telemetry::Metrics;
use prometheus::core::Collector;
use prometheus::HistogramVec;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Points kept: five minutes at one a second.
pub const HISTORY: usize = 300;
/// Seconds each point's rates and percentiles cover.
const WINDOW: usize = 5;

/// One slot's counters as read: cumulative since the process started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub requests: f64,
    pub errors: f64,
    pub ttft: Hist,
    pub itl: Hist,
}

/// A cumulative histogram: upper bounds and counts at or below each (the +Inf bucket is `count`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub count: u64,
}

impl Hist {
    fn add(&mut self, bounds: &[f64], cumulative: &[u64], count: u64) {
        if self.bounds.is_empty() {
            self.bounds = bounds.to_vec();
            self.cumulative = vec![0; bounds.len()];
        }
        if self.bounds.as_slice() == bounds {
            for (acc, c) in self.cumulative.iter_mut().zip(cumulative) {
                *acc += c;
            }
            self.count += count;
        }
    }

    /// `self - earlier`, bucket by bucket (saturating: a slot reloaded in between starts again from zero).
    fn minus(&self, earlier: &Hist) -> Hist {
        if earlier.bounds != self.bounds {
            return self.clone();
        }
        let cumulative = self.cumulative.iter().zip(&earlier.cumulative).map(|(a, b)| a.saturating_sub(*b)).collect();
        Hist { bounds: self.bounds.clone(), cumulative, count: self.count.saturating_sub(earlier.count) }
    }

    /// The q-quantile in seconds, interpolated linearly inside its bucket; None without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for (bound, cum) in self.bounds.iter().zip(&self.cumulative) {
            if *cum as f64 >= rank {
                let in_bucket = (cum - lower.1) as f64;
                let frac = if in_bucket > 0.0 { (rank - lower.1 as f64) / in_bucket } else { 1.0 };
                return Some(lower.0 + (bound - lower.0) * frac.clamp(0.0, 1.0));
            }
            lower = (*bound, *cum);
        }
        // In the +Inf bucket: the largest finite bound is the best that can be said.
        Some(lower.0)
    }
}

/// One second's figures for one slot.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SlotPoint {
    pub rps: f64,
    pub errors_ps: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p95_ms: Option<f64>,
    /// Share of new requests this slot gets, in percent.
    pub weight_pct: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Counts up from 1 (streams resume after the last they sent; wall-clock time may step back).
    pub seq: u64,
    /// Unix time, seconds.
    pub t: f64,
    pub blue: SlotPoint,
    pub green: SlotPoint,
}

/// The figures of a window: `now` minus `then`, over `secs` seconds.
pub fn point_of(now: &Totals, then: &Totals, secs: f64, weight_pct: f64) -> SlotPoint {
    let secs = secs.max(1e-9);
    let (ttft, itl) = (now.ttft.minus(&then.ttft), now.itl.minus(&then.itl));
    let ms = |h: &Hist, q: f64| h.quantile(q).map(|s| s * 1e3);
    SlotPoint {
        rps: (now.requests - then.requests).max(0.0) / secs,
        errors_ps: (now.errors - then.errors).max(0.0) / secs,
        ttft_p50_ms: ms(&ttft, 0.5),
        ttft_p95_ms: ms(&ttft, 0.95),
        itl_p50_ms: ms(&itl, 0.5),
        itl_p95_ms: ms(&itl, 0.95),
        weight_pct,
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    m.get_label().iter().find(|l| l.name() == name).map(|l| l.value())
}

fn read_hist(vec: &HistogramVec, slot: SlotName, into: &mut Hist) {
    for family in vec.collect() {
        for m in family.get_metric().iter().filter(|m| label(m, "slot") == Some(slot.as_str())) {
            let h = m.get_histogram();
            let bounds: Vec<f64> = h.get_bucket().iter().map(|b| b.upper_bound()).collect();
            let cum: Vec<u64> = h.get_bucket().iter().map(|b| b.cumulative_count()).collect();
            into.add(&bounds, &cum, h.get_sample_count());
        }
    }
}

/// One slot's totals, read from the metrics.
pub fn read(metrics: &Metrics, slot: SlotName) -> Totals {
    let mut t = Totals::default();
    for family in metrics.requests.collect() {
        for m in family.get_metric().iter().filter(|m| label(m, "slot") == Some(slot.as_str())) {
            let v = m.get_counter().get_value();
            t.requests += v;
            if label(m, "status").is_some_and(|s| s.starts_with('5')) {
                t.errors += v;
            }
        }
    }
    read_hist(&metrics.ttft, slot, &mut t.ttft);
    read_hist(&metrics.itl, slot, &mut t.itl);
    t
}

/// Each slot's share of new traffic now, in percent.
fn weights(router: &LiveRouter) -> (f64, f64) {
    let pct = |slot: SlotName, canary: SlotName, w: f64| if slot == canary { w } else { 100.0 - w };
    if let Some(split) = router.split() {
        let w = f64::from(split.weight_bp()) / 100.0;
        return (pct(SlotName::Blue, split.canary.slot, w), pct(SlotName::Green, split.canary.slot, w));
    }
    match router.peek().map(|r| r.slot) {
        Some(SlotName::Blue) => (100.0, 0.0),
        Some(SlotName::Green) => (0.0, 100.0),
        None => (0.0, 0.0),
    }
}

/// The kept points, shared by the sampler and the dashboard's streams.
#[derive(Clone, Default)]
pub struct Traffic {
    points: Arc<Mutex<VecDeque<Point>>>,
}

impl Traffic {
    /// Points after the one numbered `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<Point> {
        let points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        points.iter().filter(|p| p.seq > after).cloned().collect()
    }

    fn push(&self, mut p: Point) {
        let mut points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        p.seq = points.back().map_or(1, |last| last.seq + 1);
        points.push_back(p);
        while points.len() > HISTORY {
            points.pop_front();
        }
    }

    /// Samples once a second until the server starts shutting down or its router is gone (a weak reference:
    /// the sampler never keeps a slot's model alive).
    pub fn start_sampler(&self, metrics: Metrics, router: &Arc<LiveRouter>, shutdown: ShutdownSignal) {
        let traffic = self.clone();
        let router = Arc::downgrade(router);
        tokio::spawn(async move {
            let mut past: VecDeque<[Totals; 2]> = VecDeque::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.reached(Phase::Draining) => break,
                }
                let Some(router) = router.upgrade() else { break };
                let now = [read(&metrics, SlotName::Blue), read(&metrics, SlotName::Green)];
                let Some(then) = past.front().cloned() else {
                    past.push_back(now);
                    continue;
                };
                let secs = past.len() as f64;
                let (wb, wg) = weights(&router);
                let [nb, ng] = &now;
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                let [tb, tg] = &then;
                traffic.push(Point { seq: 0, t, blue: point_of(nb, tb, secs, wb), green: point_of(ng, tg, secs, wg) });
                past.push_back(now);
                if past.len() > WINDOW {
                    past.pop_front();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(bounds: &[f64], per_bucket: &[u64], inf: u64) -> Hist {
        let mut cum = 0;
        let cumulative = per_bucket.iter().map(|c| {
            cum += c;
            cum
        });
        let cumulative: Vec<u64> = cumulative.collect();
        Hist { bounds: bounds.to_vec(), count: cum + inf, cumulative }
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let h = hist(&[0.01, 0.02, 0.04], &[0, 10, 0], 0);
        assert!((h.quantile(0.5).unwrap() - 0.015).abs() < 1e-12);
        let h = hist(&[0.01, 0.02, 0.04], &[10, 0, 10], 0);
        assert!((h.quantile(0.95).unwrap() - 0.038).abs() < 1e-12);
        assert_eq!(hist(&[0.01], &[0], 0).quantile(0.5), None, "no observations");
        assert_eq!(hist(&[0.01, 0.02], &[0, 0], 4).quantile(0.5), Some(0.02), "all above the last bound");
    }

    #[test]
    fn a_window_is_the_difference_of_two_readings() {
        let then = Totals { requests: 10.0, errors: 1.0, ttft: hist(&[0.1, 0.2], &[5, 0], 0), ..Default::default() };
        let now = Totals { requests: 20.0, errors: 3.0, ttft: hist(&[0.1, 0.2], &[5, 4], 0), ..Default::default() };
        let p = point_of(&now, &then, 2.0, 25.0);
        assert_eq!((p.rps, p.errors_ps, p.weight_pct), (5.0, 1.0, 25.0));
        // Only the four new observations, all in (0.1, 0.2]: the median is 150 ms.
        assert!((p.ttft_p50_ms.unwrap() - 150.0).abs() < 1e-9);
        assert_eq!(p.itl_p50_ms, None);
        // A reload in between (counters back to zero) gives no negative rates.
        let reloaded = Totals { requests: 2.0, ..Default::default() };
        assert_eq!(point_of(&reloaded, &now, 1.0, 0.0).rps, 0.0);
    }

    #[test]
    fn metrics_are_summed_per_slot() {
        let m = Metrics::new();
        m.requests.with_label_values(&["a", "blue", "chat", "200"]).inc_by(3);
        m.requests.with_label_values(&["a", "blue", "chat", "503"]).inc_by(2);
        m.requests.with_label_values(&["b", "green", "chat", "200"]).inc_by(7);
        m.ttft.with_label_values(&["a", "blue", "v1"]).observe(0.003);
        m.ttft.with_label_values(&["a2", "blue", "v2"]).observe(0.003);
        let blue = read(&m, SlotName::Blue);
        assert_eq!((blue.requests, blue.errors, blue.ttft.count), (5.0, 2.0, 2));
        assert_eq!(read(&m, SlotName::Green).requests, 7.0);
    }
}
