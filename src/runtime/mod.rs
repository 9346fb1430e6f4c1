//! Connects the layers: watches fill the caches, their events queue Jobs, each sync plans
//! from the caches and acts on the plan. Jobs of other controllers are dropped before they
//! reach the cache; pods are watched by the label every Job pod carries, and those of
//! other controllers' Jobs are dropped too.
//!
//! [`controller`] is the wiring; the pieces it connects are [`watches`] (what reaches the
//! caches), [`sync`] (one Job's sync) and [`cleanup`] (pods nobody syncs any more).

mod cleanup;
mod sync;
mod watches;
mod workers;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error};

use crate::act::budget::CreateBudget;
use crate::act::execute::EventSink;
use crate::act::load::ApiLoad;
use crate::cluster::expectations::Expectations;
use crate::cluster::foreign_jobs::ForeignJobs;
use crate::cluster::pod_index::PodIndex;
use crate::cluster::selector_watches::{CONTROLLER_UID_LABEL, SelectorWatches};
use crate::cluster::status_batch::{Periods, StatusBatcher};
use crate::cluster::watch_expiry;
use crate::config::BUILT_IN_MANAGER;
pub use crate::edge::health::WatchSettings;
use crate::edge::metrics::SharedMetrics;
use crate::plan::BackoffRecord;
use workers::Workers;

pub use sync::{Pending, SyncError};

/// Which Jobs are ours.
#[derive(Debug, Clone)]
pub struct Ownership {
    pub managed_by: String,
    pub all_jobs: bool,
    /// Empty: every namespace.
    pub namespaces: HashSet<String>,
}

impl Ownership {
    pub fn owns(&self, job: &Job) -> bool {
        if !self.namespaces.is_empty()
            && !self
                .namespaces
                .contains(job.metadata.namespace.as_deref().unwrap_or_default())
        {
            return false;
        }
        match job.spec.as_ref().and_then(|s| s.managed_by.as_deref()) {
            Some(m) if m == self.managed_by => true,
            None => self.all_jobs,
            Some(m) => self.all_jobs && m == BUILT_IN_MANAGER,
        }
    }

    /// Says in words who syncs a Job (for `explain` and logs).
    pub fn owner_of(&self, job: &Job) -> String {
        let managed_by = job.spec.as_ref().and_then(|s| s.managed_by.clone());
        if self.owns(job) {
            format!(
                "jobkeeper (spec.managedBy {})",
                managed_by.as_deref().unwrap_or("unset; --all-jobs")
            )
        } else {
            match managed_by.as_deref() {
                None | Some(BUILT_IN_MANAGER) => {
                    "the built-in job controller (spec.managedBy unset)".to_string()
                }
                Some(other) => format!("another controller ({other})"),
            }
        }
    }
}

pub struct Context {
    pub client: Client,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub pod_index: PodIndex,
    pub expectations: Expectations,
    /// Bounds the pod bodies all syncs create at once (memory, whatever the templates).
    pub create_budget: CreateBudget,
    pub backoff: Mutex<HashMap<String, BackoffRecord>>,
    pub errors: Mutex<HashMap<String, u32>>,
    pub events: EventSink,
    pub metrics: SharedMetrics,
    pub caches: Caches,
    pub pending: Pending,
    pub batcher: Arc<StatusBatcher>,
    /// By Job UID: when its next sync may start (see [`PLANNING_PACE`]).
    pub not_before: Mutex<HashMap<String, Instant>>,
    /// The pod watches of manualSelector Jobs.
    pub selector_watches: SelectorWatches,
    /// `--concurrency` syncs at once, the waiting ones served in order.
    pub workers: Workers,
}

#[derive(Clone)]
pub struct RuntimeConfig {
    pub ownership: Ownership,
    pub concurrency: u16,
    pub reporter_instance: String,
    /// The least and the most time between two counter-only status writes of one Job.
    pub status_batch_periods: Periods,
    /// The delay requests meet, which the batch period follows (fed by the client too).
    pub load: Arc<ApiLoad>,
    /// How long a change of only active/ready/terminating may wait.
    pub status_gauge_delay: Duration,
    pub watches: WatchSettings,
}

/// Whether the controller's caches have synced, for readiness and for syncs that must
/// not plan from an empty cache.
///
/// kube-runtime's `Store::wait_until_ready` wakes only one of several concurrent waiters
/// (and the controller itself already waits on the Job store), so a single task polls
/// both stores and publishes the answer on a channel any number of waiters can share.
#[derive(Clone)]
pub struct Caches {
    synced: watch::Receiver<bool>,
}

impl Caches {
    fn new(jobs: Store<Job>, pods: Store<Pod>) -> (Caches, impl Future<Output = ()>) {
        let (tx, rx) = watch::channel(false);
        let watch_stores = async move {
            poll_until_ready(&jobs).await;
            poll_until_ready(&pods).await;
            debug!("caches synced");
            tx.send(true).ok();
            // Keep the sender alive so waiters see `true`, not a closed channel.
            future::pending::<()>().await;
        };
        (Caches { synced: rx }, watch_stores)
    }

    pub async fn wait_until_ready(&self) {
        let mut synced = self.synced.clone();
        synced.wait_for(|s| *s).await.ok();
    }
}

async fn poll_until_ready<K>(store: &Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // Each poll registers our waker anew; if another waiter took the wake-up, the next
    // round sees the store ready.
    while tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
        .await
        .is_err()
    {}
}

/// Builds the caches and returns them with the future that runs the controller until
/// `shutdown` resolves.
pub fn controller(
    client: Client,
    config: RuntimeConfig,
    metrics: SharedMetrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (Caches, impl Future<Output = ()>) {
    let (jobs, job_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    let (deleted_tx, deleted_rx) = mpsc::unbounded_channel();
    let (left_tx, left_rx) = mpsc::unbounded_channel();
    let (orphans_tx, orphans_rx) = mpsc::unbounded_channel();
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    let expectations = Expectations::default();
    let selector_watches = SelectorWatches::new(
        client.clone(),
        config.watches.clone(),
        (wake_tx, left_tx.clone()),
        expectations.clone(),
    );
    let (workers, stop_workers) = Workers::new(config.concurrency);
    let shutdown = async move {
        shutdown.await;
        stop_workers.send(true).ok();
    };
    let shared = (jobs, pods, expectations);
    let (ctx, background) = context(
        &client,
        &config,
        metrics,
        shared,
        (selector_watches, workers),
    );

    let (jobs_api, pods_api) = watches::apis(&client, &config.ownership.namespaces);
    let health = &config.watches.health;
    let registrations = [
        health.register("jobs", jobs_api.resource_url(), None),
        health.register("pods", pods_api.resource_url(), Some(CONTROLLER_UID_LABEL)),
    ];
    let (purge_tx, purge_rx) = futures::channel::mpsc::unbounded();
    let theirs = watches::TheirJobs {
        foreign: ForeignJobs::default(),
        index: ctx.pod_index.clone(),
        pods: ctx.pods.clone(),
        purge: purge_tx,
    };
    let ownership = (config.ownership.clone(), theirs.clone());
    let to_cleanup = (deleted_tx, orphans_tx.clone());
    let job_config = config.watches.config();
    let job_events = watches::job_watch(
        jobs_api, job_config, job_writer, ownership, to_cleanup, &ctx,
    );
    let namespaces = config.ownership.namespaces.clone();
    let to_cleanup = (left_tx, orphans_tx);
    let pod_config = config.watches.config().labels(CONTROLLER_UID_LABEL);
    let pod_events = watches::pod_watch(
        pods_api,
        pod_config,
        (pod_writer, purge_rx),
        (namespaces, theirs),
        to_cleanup,
        &ctx,
    );
    let ownership = config.ownership.clone();
    let cleanup = cleanup::cleanup_tasks(ctx.clone(), ownership, deleted_rx, left_rx, orphans_rx);
    let caches = ctx.caches.clone();
    let syncs = sync_loop(job_events, pod_events, wake_rx, ctx, shutdown);

    let run = async move {
        // The watches are judged for as long as they run.
        let _registrations = registrations;
        tokio::select! {
            _ = syncs => {}
            _ = cleanup => {}
            _ = background => {}
        }
    };
    (caches, run)
}

/// What every sync reads and writes through, with the tasks that keep it going (the
/// caches' readiness, the ordered publishing of events).
fn context(
    client: &Client,
    config: &RuntimeConfig,
    metrics: SharedMetrics,
    (jobs, pods, expectations): (Store<Job>, Store<Pod>, Expectations),
    (selector_watches, workers): (SelectorWatches, Workers),
) -> (Arc<Context>, impl Future<Output = ()> + use<>) {
    let (events, publish_events) = event_sink(client, &config.reporter_instance);
    let (caches, watch_stores) = Caches::new(jobs.clone(), pods.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        jobs,
        pods,
        pod_index: PodIndex::default(),
        expectations,
        create_budget: CreateBudget::default(),
        backoff: Mutex::default(),
        errors: Mutex::default(),
        events,
        pending: Pending::new(
            metrics.queue_depth.clone(),
            config.load.clone(),
            workers.clone(),
        ),
        metrics,
        caches,
        batcher: Arc::new(StatusBatcher::new(
            config.status_batch_periods,
            config.status_gauge_delay,
            config.load.clone(),
        )),
        not_before: Mutex::default(),
        selector_watches,
        workers,
    });
    let publish_load = publish_load(ctx.clone());
    let background = async move {
        tokio::select! {
            _ = watch_stores => {}
            _ = publish_events => {}
            _ = publish_load => {}
        }
    };
    (ctx, background)
}

/// Sets the load gauges (the delay's parts, the batch period) every second.
async fn publish_load(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (delays, period) = ctx.batcher.load_at(Instant::now());
        let metrics = &ctx.metrics;
        for (part, delay) in [
            ("queue", delays.queue),
            ("token", delays.token),
            ("response", delays.response),
        ] {
            metrics
                .api_delay
                .get_or_create(&crate::edge::metrics::PartLabel { part: part.into() })
                .set(delay.as_secs_f64());
        }
        metrics.status_batch_period.set(period.as_secs_f64());
    }
}

/// Job events, as this instance publishes them, and the task that publishes them.
fn event_sink(client: &Client, instance: &str) -> (EventSink, impl Future<Output = ()> + use<>) {
    let reporter = Reporter {
        controller: "jobkeeper".into(),
        instance: Some(instance.to_string()),
    };
    EventSink::new(Recorder::new(client.clone(), reporter))
}

/// The queue and its workers: a Job is synced on its own events, its pods' events and its
/// selector watch's wake-ups, until `shutdown`. kube-runtime starts every triggered sync at
/// once; each waits for one of the [`Workers`] (`--concurrency`) in the order triggered.
fn sync_loop(
    job_events: impl Stream<Item = Result<Job, watcher::Error>> + Send + 'static,
    pod_events: impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
    wake: impl Stream<Item = ObjectRef<Job>> + Send + 'static,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let managed_jobs = ctx.metrics.managed_jobs.clone();
    let jobs = ctx.jobs.clone();
    let pending = ctx.pending.clone();
    Controller::for_stream(job_events, ctx.jobs.clone())
        .watches_stream(
            pod_events,
            watches::jobs_to_wake(ctx.jobs.clone(), pending.clone()),
        )
        .reconcile_on(wake.inspect(move |job| pending.add(job.clone())))
        .trigger_backoff(EachWatchBacksOffAlone)
        .with_config(controller::Config::default().concurrency(0))
        .graceful_shutdown_on(shutdown)
        .run(sync::reconcile, sync::error_policy, ctx)
        .for_each(move |result| {
            managed_jobs.set(jobs.len() as i64);
            if let Err(e) = result {
                match e {
                    controller::Error::ObjectNotFound(_) => {}
                    controller::Error::ReconcilerFailed(..) => {}
                    // Said at info by the watch that expired, which lists again.
                    controller::Error::QueueError(e) if watch_expiry::is_expired(&e) => {}
                    other => error!(error = %other, "controller stream error"),
                }
            }
            future::ready(())
        })
}

/// The controller's own backoff over all its input streams together: none. Each watch
/// already backs off on its own errors (`default_backoff` in [`watches`], and in each
/// selector watch); kube-runtime's default here would put every watch and the wake-ups to
/// sleep on any one watch's error, for up to 30 s and more, growing with each error of any
/// of them until two minutes pass without one. After a long outage that held a recovered
/// watch unpolled, its request unanswered, for a minute and more, and a pod watch's 410
/// Gone stopped the Job watch too.
struct EachWatchBacksOffAlone;

impl Iterator for EachWatchBacksOffAlone {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for EachWatchBacksOffAlone {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn job(ns: &str, managed_by: Option<&str>) -> Job {
        Job {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                managed_by: managed_by.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn owns_only_jobs_managed_by_us_unless_all_jobs() {
        let ours = "jobkeeper.dev/job-controller";
        let o = Ownership {
            managed_by: ours.into(),
            all_jobs: false,
            namespaces: HashSet::new(),
        };
        assert!(o.owns(&job("a", Some(ours))));
        assert!(!o.owns(&job("a", None)));
        assert!(!o.owns(&job("a", Some(BUILT_IN_MANAGER))));
        assert!(!o.owns(&job("a", Some("example.com/other"))));
        let all = Ownership {
            all_jobs: true,
            ..o.clone()
        };
        assert!(all.owns(&job("a", None)));
        assert!(all.owns(&job("a", Some(BUILT_IN_MANAGER))));
        assert!(!all.owns(&job("a", Some("example.com/other"))));
        let scoped = Ownership {
            namespaces: HashSet::from(["b".to_string()]),
            ..o
        };
        assert!(!scoped.owns(&job("a", Some(ours))));
        assert!(scoped.owns(&job("b", Some(ours))));
    }
}
