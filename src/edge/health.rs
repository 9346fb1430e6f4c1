//! Whether the controller's watches are connected, for `/readyz`, a log line and the
//! `jobkeeper_watch_healthy` metric.
//!
//! A watch that cannot reach the apiserver keeps serving its cache, which looks healthy and
//! grows stale. The client layer sees every list and watch request a watch makes, and
//! reports each outcome here by its target (path and selectors): a watch is failing from
//! its first failed request until one succeeds, and unhealthy once it has been failing for
//! `--watch-unhealthy-after`. A watch that hangs rather than fails is cut by kube-runtime's
//! idle timeout (`--watch-timeout` + 5 s) and its next request by the request deadline, so
//! a hang turns into failures too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

use crate::edge::metrics::WatchLabel;

/// The kinds of watch, as registered and as the metric's `watch` label names them.
pub const WATCH_KINDS: [&str; 3] = ["jobs", "pods", "manualSelector pods"];

/// What every watch runs with.
#[derive(Clone)]
pub struct WatchSettings {
    /// Where the watches' requests are judged.
    pub health: WatchHealth,
    /// `--watch-timeout`: the server ends each watch request after this.
    pub timeout_seconds: u32,
}

impl WatchSettings {
    /// A watcher's configuration with the watch timeout.
    pub fn config(&self) -> kube::runtime::watcher::Config {
        kube::runtime::watcher::Config::default().timeout(self.timeout_seconds)
    }
}

/// The watches and how their requests went.
#[derive(Clone)]
pub struct WatchHealth {
    inner: Arc<Inner>,
}

struct Inner {
    unhealthy_after: Duration,
    watches: Mutex<HashMap<String, Entry>>,
    gauge: Family<WatchLabel, Gauge>,
}

struct Entry {
    /// What the watch lists (`jobs`, `pods`, `manualSelector pods`), for logs and the metric.
    kind: &'static str,
    /// Watches of one target (two registrations of one selector share the entry).
    registrations: usize,
    failing_since: Option<Instant>,
    last_error: String,
    /// Whether the monitor has reported it unhealthy (and not yet recovered).
    reported: bool,
}

impl Entry {
    fn unhealthy(&self, after: Duration, now: Instant) -> bool {
        self.failing_since
            .is_some_and(|since| now.saturating_duration_since(since) >= after)
    }
}

/// A watch's place in [`WatchHealth`]; it leaves when this is dropped.
pub struct Registration {
    health: WatchHealth,
    target: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut watches = self.health.lock();
        if let Some(entry) = watches.get_mut(&self.target) {
            entry.registrations = entry.registrations.saturating_sub(1);
            if entry.registrations == 0 {
                watches.remove(&self.target);
            }
        }
    }
}

impl WatchHealth {
    pub fn new(unhealthy_after: Duration, gauge: Family<WatchLabel, Gauge>) -> Self {
        WatchHealth {
            inner: Arc::new(Inner {
                unhealthy_after,
                watches: Mutex::default(),
                gauge,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner
            .watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers the watch of `resource_url` (kube's `Api::resource_url`) by
    /// `label_selector`.
    pub fn register(
        &self,
        kind: &'static str,
        resource_url: &str,
        label_selector: Option<&str>,
    ) -> Registration {
        let target = target(resource_url, label_selector);
        self.lock()
            .entry(target.clone())
            .or_insert(Entry {
                kind,
                registrations: 0,
                failing_since: None,
                last_error: String::new(),
                reported: false,
            })
            .registrations += 1;
        Registration {
            health: self.clone(),
            target,
        }
    }

    /// Records the outcome of a GET (list or watch) of `path` with `query`, if a
    /// registered watch makes it.
    pub fn observe(&self, path: &str, query: Option<&str>, outcome: Result<(), String>) {
        let label_selector = query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "labelSelector")
                .map(|(_, v)| v.into_owned())
        });
        let target = target(path, label_selector.as_deref());
        let mut watches = self.lock();
        let Some(entry) = watches.get_mut(&target) else {
            return;
        };
        match outcome {
            Ok(()) => entry.failing_since = None,
            Err(error) => {
                entry.failing_since.get_or_insert_with(Instant::now);
                entry.last_error = error;
            }
        }
    }

    /// No watch has been failing for `--watch-unhealthy-after`.
    pub fn healthy(&self) -> bool {
        let now = Instant::now();
        let after = self.inner.unhealthy_after;
        self.lock().values().all(|e| !e.unhealthy(after, now))
    }

    /// Logs each watch that turns unhealthy or recovers and keeps the metric, once a
    /// second, for as long as the process runs.
    pub async fn monitor(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.report();
        }
    }

    fn report(&self) {
        let now = Instant::now();
        let after = self.inner.unhealthy_after;
        let mut by_kind: HashMap<&'static str, bool> = HashMap::new();
        for (target, entry) in self.lock().iter_mut() {
            let unhealthy = entry.unhealthy(after, now);
            if unhealthy && !entry.reported {
                warn!(
                    watch = entry.kind,
                    target = %target,
                    unhealthy_after_s = after.as_secs(),
                    error = %entry.last_error,
                    "a watch cannot reach the API server; its cache is going stale, /readyz is false"
                );
            } else if !unhealthy && entry.reported {
                info!(watch = entry.kind, target = %target, "the watch is connected again");
            }
            entry.reported = unhealthy;
            *by_kind.entry(entry.kind).or_insert(true) &= !unhealthy;
        }
        for kind in WATCH_KINDS {
            let label = WatchLabel {
                watch: kind.to_string(),
            };
            match by_kind.get(kind) {
                Some(healthy) => {
                    self.inner
                        .gauge
                        .get_or_create(&label)
                        .set(i64::from(*healthy));
                }
                None => {
                    self.inner.gauge.remove(&label);
                }
            }
        }
    }
}

/// A watch's identity in requests: its path and label selector.
fn target(path: &str, label_selector: Option<&str>) -> String {
    match label_selector {
        Some(selector) if !selector.is_empty() => format!("{path}?labelSelector={selector}"),
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(after: Duration) -> WatchHealth {
        WatchHealth::new(after, Family::default())
    }

    #[test]
    fn a_watch_is_unhealthy_once_it_failed_for_long_enough_and_healthy_when_it_recovers() {
        let health = health(Duration::ZERO);
        let _pods = health.register("pods", "/api/v1/namespaces/a/pods", Some("x"));
        assert!(health.healthy());
        let query = Some("watch=true&labelSelector=x&timeoutSeconds=290");
        health.observe("/api/v1/namespaces/a/pods", query, Err("timed out".into()));
        assert!(!health.healthy());
        health.observe("/api/v1/namespaces/a/pods", Some("labelSelector=x"), Ok(()));
        assert!(health.healthy());
    }

    #[test]
    fn a_failure_counts_only_for_its_own_watch_and_only_after_the_grace() {
        let health = health(Duration::from_secs(3600));
        let _jobs = health.register("jobs", "/apis/batch/v1/namespaces/a/jobs", None);
        health.observe(
            "/apis/batch/v1/namespaces/a/jobs",
            Some("watch=true"),
            Err("refused".into()),
        );
        assert!(health.healthy(), "failing, but not for an hour yet");
        let strict = self::health(Duration::ZERO);
        let _jobs = strict.register("jobs", "/apis/batch/v1/namespaces/a/jobs", None);
        strict.observe(
            "/apis/batch/v1/namespaces/a/jobs/j",
            None,
            Err("refused".into()),
        );
        strict.observe(
            "/api/v1/namespaces/a/pods",
            Some("watch=true"),
            Err("refused".into()),
        );
        assert!(strict.healthy(), "requests of no registered watch");
    }

    #[test]
    fn a_stopped_watch_leaves_the_health() {
        let health = health(Duration::ZERO);
        let selector = "app=b,!batch.kubernetes.io/controller-uid";
        let watch = health.register(
            "manualSelector pods",
            "/api/v1/namespaces/a/pods",
            Some(selector),
        );
        health.observe(
            "/api/v1/namespaces/a/pods",
            Some("labelSelector=app%3Db%2C%21batch.kubernetes.io%2Fcontroller-uid"),
            Err("refused".into()),
        );
        assert!(!health.healthy());
        drop(watch);
        assert!(health.healthy());
    }
}
