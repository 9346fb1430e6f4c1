//! Prometheus metrics under the `jobkeeper_` prefix. The job-controller figures mirror
//! upstream's `job_controller_*` metrics so dashboards translate one to one.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobFinishedLabels {
    pub completion_mode: String,
    pub result: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLatencyLabels {
    pub verb: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabel {
    pub watch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartLabel {
    pub part: String,
}

/// A gauge of seconds.
pub type Seconds = Gauge<f64, AtomicU64>;

#[derive(Clone)]
pub struct Buckets(fn() -> Histogram);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        (self.0)()
    }
}

fn seconds_buckets() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    pub sync_duration: Family<ResultLabel, Histogram, Buckets>,
    pub syncs: Family<ResultLabel, Counter>,
    pub jobs_finished: Family<JobFinishedLabels, Counter>,
    pub pods_finished: Family<ResultLabel, Counter>,
    pub pod_failures_handled_by_failure_policy: Family<ActionLabel, Counter>,
    pub terminated_pods_tracking_finalizer: Family<EventLabel, Counter>,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    pub api_requests: Family<RequestLabels, Counter>,
    pub api_request_duration: Family<RequestLatencyLabels, Histogram, Buckets>,
    pub queue_depth: Gauge,
    pub status_writes_held: Counter,
    pub status_batch_period: Seconds,
    pub api_delay: Family<PartLabel, Seconds>,
    pub leader: Gauge,
    pub managed_jobs: Gauge,
    pub cached_pods: Gauge,
    pub watch_healthy: Family<WatchLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("jobkeeper");
        let m = Self {
            sync_duration: Family::new_with_constructor(Buckets(seconds_buckets)),
            syncs: Family::default(),
            jobs_finished: Family::default(),
            pods_finished: Family::default(),
            pod_failures_handled_by_failure_policy: Family::default(),
            terminated_pods_tracking_finalizer: Family::default(),
            reconcile_errors: Family::default(),
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(Buckets(seconds_buckets)),
            queue_depth: Gauge::default(),
            status_writes_held: Counter::default(),
            status_batch_period: Seconds::default(),
            api_delay: Family::default(),
            leader: Gauge::default(),
            managed_jobs: Gauge::default(),
            cached_pods: Gauge::default(),
            watch_healthy: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "job_sync_duration_seconds",
            "Time to sync one Job, by result (success, error, conflict)",
            m.sync_duration.clone(),
        );
        registry.register("job_syncs", "Job syncs, by result", m.syncs.clone());
        registry.register(
            "jobs_finished",
            "Jobs that reached Complete or Failed, by completion mode, result and reason",
            m.jobs_finished.clone(),
        );
        registry.register(
            "job_pods_finished",
            "Finished pods counted in a Job status, by result (succeeded, failed)",
            m.pods_finished.clone(),
        );
        registry.register(
            "pod_failures_handled_by_failure_policy",
            "Pod failures matched by a podFailurePolicy rule, by action",
            m.pod_failures_handled_by_failure_policy.clone(),
        );
        registry.register(
            "terminated_pods_tracking_finalizer",
            "Tracking-finalizer events on terminated pods (add, delete)",
            m.terminated_pods_tracking_finalizer.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Sync errors, by kind",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "kube_api_requests",
            "Requests to the Kubernetes API, by verb, resource and HTTP code",
            m.api_requests.clone(),
        );
        registry.register(
            "kube_api_request_duration_seconds",
            "Latency of requests to the Kubernetes API, by verb and resource",
            m.api_request_duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Jobs waiting for or in a sync",
            m.queue_depth.clone(),
        );
        registry.register(
            "job_status_writes_held",
            "Counter-only status writes held back to batch them with the next (see --status-batch-period)",
            m.status_writes_held.clone(),
        );
        registry.register(
            "status_batch_period_seconds",
            "Least time between two counter-only status writes of one Job now: --status-batch-period while the API server keeps up, growing with api_delay_seconds up to --status-batch-period-max",
            m.status_batch_period.clone(),
        );
        registry.register(
            "api_delay_seconds",
            "Mean delay a request meets over about the last second, by part: queue (trigger to sync start), token (client rate limit), response (apiserver)",
            m.api_delay.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader lease (or runs without election)",
            m.leader.clone(),
        );
        registry.register(
            "managed_jobs",
            "Jobs in the controller's cache (ours by spec.managedBy)",
            m.managed_jobs.clone(),
        );
        registry.register(
            "cached_pods",
            "Pods in the controller's main pod cache: those of our Jobs with a generated selector, and orphans with the controller-uid label (not those of other controllers' Jobs)",
            m.cached_pods.clone(),
        );
        registry.register(
            "watch_healthy",
            "1 while every watch of a kind (jobs, pods, manualSelector pods) is connected, 0 once one has failed to reach the API server for --watch-unhealthy-after",
            m.watch_healthy.clone(),
        );
        Self { registry, ..m }
    }

    pub fn observe_sync(&self, result: &str, took: Duration) {
        let label = ResultLabel {
            result: result.to_string(),
        };
        self.syncs.get_or_create(&label).inc();
        self.sync_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    pub fn observe_request(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        self.api_requests
            .get_or_create(&RequestLabels {
                verb: verb.to_string(),
                resource: resource.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.api_request_duration
            .get_or_create(&RequestLatencyLabels {
                verb: verb.to_string(),
                resource: resource.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix_and_labels() {
        let m = Metrics::new();
        m.observe_sync("success", Duration::from_millis(3));
        m.observe_request("create", "pods", 201, Duration::from_millis(2));
        let text = m.encode();
        assert!(text.contains("jobkeeper_job_syncs_total{result=\"success\"} 1"));
        assert!(text.contains(
            "jobkeeper_kube_api_requests_total{verb=\"create\",resource=\"pods\",code=\"201\"} 1"
        ));
        assert!(text.contains("jobkeeper_job_sync_duration_seconds_bucket"));
    }
}
