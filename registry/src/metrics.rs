//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format (through
//! `prometheus-client`, the OpenMetrics project's Rust client):
//!
//! - `tenpak_jobs{state}`: jobs per state (read from the job store at each scrape);
//! - `tenpak_http_requests_total{route,method,status}` and
//!   `tenpak_http_request_duration_seconds{route,method}`: every request, by the route
//!   that matched (`/artifact/{id}`, not the id: bounded label values);
//! - `tenpak_http_response_bytes_total{route}`: bytes of the response bodies that declare
//!   a length (artifact ranges, resolve, JSON);
//! - `tenpak_job_stage_duration_seconds{stage}`: time spent in each pipeline stage;
//! - `tenpak_jobs_finished_total{outcome}` and `tenpak_job_duration_seconds{outcome}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

fn request_buckets() -> Histogram {
    // 0.25 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

fn job_buckets() -> Histogram {
    // 10 ms .. ~5.8 h.
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

/// The registry's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Request, Counter>,
    latency: Family<Route, Histogram, fn() -> Histogram>,
    response_bytes: Family<RouteOnly, Counter>,
    jobs: Family<State, Gauge>,
    stages: Family<Stage, Histogram, fn() -> Histogram>,
    finished: Family<Outcome, Counter>,
    job_seconds: Family<Outcome, Histogram, fn() -> Histogram>,
    /// Running jobs' current stage and since when.
    current: Mutex<HashMap<i64, (String, Instant)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Request, Counter>::default();
        let latency = Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(
            request_buckets as fn() -> Histogram,
        );
        let response_bytes = Family::<RouteOnly, Counter>::default();
        let jobs = Family::<State, Gauge>::default();
        let stages =
            Family::<Stage, Histogram, fn() -> Histogram>::new_with_constructor(job_buckets);
        let finished = Family::<Outcome, Counter>::default();
        let job_seconds =
            Family::<Outcome, Histogram, fn() -> Histogram>::new_with_constructor(job_buckets);
        registry.register(
            "tenpak_http_requests",
            "HTTP requests by matched route, method and status",
            requests.clone(),
        );
        registry.register(
            "tenpak_http_request_duration_seconds",
            "HTTP request latency (until the response head) by matched route",
            latency.clone(),
        );
        registry.register(
            "tenpak_http_response_bytes",
            "Bytes of response bodies with a declared length, by matched route",
            response_bytes.clone(),
        );
        registry.register("tenpak_jobs", "Jobs per state", jobs.clone());
        registry.register(
            "tenpak_job_stage_duration_seconds",
            "Time jobs spent in each pipeline stage",
            stages.clone(),
        );
        registry.register(
            "tenpak_jobs_finished",
            "Job attempts ended, by outcome",
            finished.clone(),
        );
        registry.register(
            "tenpak_job_duration_seconds",
            "Job attempt duration, by outcome",
            job_seconds.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            response_bytes,
            jobs,
            stages,
            finished,
            job_seconds,
            current: Mutex::new(HashMap::new()),
        }
    }

    /// Records one answered request.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration, bytes: u64) {
        self.requests
            .get_or_create(&Request {
                route: route.into(),
                method: method.into(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&Route {
                route: route.into(),
                method: method.into(),
            })
            .observe(took.as_secs_f64());
        if bytes > 0 {
            self.response_bytes
                .get_or_create(&RouteOnly {
                    route: route.into(),
                })
                .inc_by(bytes);
        }
    }

    /// Job `id` entered `stage` (its first word: `publish: 3 of 9 MB` is `publish`); the
    /// time of the stage it leaves is observed.
    pub fn stage(&self, id: i64, stage: &str) {
        let name = stage
            .split([':', ' ', '('])
            .next()
            .unwrap_or(stage)
            .to_string();
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match cur.get(&id) {
            Some((s, _)) if *s == name => {}
            _ => {
                if let Some((s, since)) = cur.insert(id, (name, Instant::now())) {
                    self.stages
                        .get_or_create(&Stage { stage: s })
                        .observe(since.elapsed().as_secs_f64());
                }
            }
        }
    }

    /// An attempt of job `id` ended with `outcome` after `took`.
    pub fn job_ended(&self, id: i64, outcome: &str, took: Duration) {
        if let Some((s, since)) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            self.stages
                .get_or_create(&Stage { stage: s })
                .observe(since.elapsed().as_secs_f64());
        }
        let o = Outcome {
            outcome: outcome.into(),
        };
        self.finished.get_or_create(&o).inc();
        self.job_seconds
            .get_or_create(&o)
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics text, with the job counts as given.
    pub fn render(&self, job_counts: &[(String, i64)]) -> String {
        for s in crate::store::JobState::ALL.map(|s| s.as_str()) {
            let n = job_counts
                .iter()
                .find(|(k, _)| k == s)
                .map_or(0, |(_, n)| *n);
            self.jobs
                .get_or_create(&State {
                    state: s.to_string(),
                })
                .set(n);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_stages_and_job_counts() {
        let m = Metrics::new();
        m.request("/artifact/{id}", "GET", 206, Duration::from_millis(3), 4096);
        m.stage(1, "download");
        m.stage(1, "pack balanced");
        m.stage(1, "publish: 1.0 of 2.0 MB processed");
        m.job_ended(1, "published", Duration::from_secs(2));
        let text = m.render(&[("done".into(), 3)]);
        for want in [
            r#"tenpak_http_requests_total{route="/artifact/{id}",method="GET",status="206"} 1"#,
            r#"tenpak_http_response_bytes_total{route="/artifact/{id}"} 4096"#,
            r#"tenpak_jobs{state="done"} 3"#,
            r#"tenpak_jobs{state="failed"} 0"#,
            r#"tenpak_job_stage_duration_seconds_count{stage="download"} 1"#,
            r#"tenpak_job_stage_duration_seconds_count{stage="pack"} 1"#,
            r#"tenpak_job_stage_duration_seconds_count{stage="publish"} 1"#,
            r#"tenpak_jobs_finished_total{outcome="published"} 1"#,
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
