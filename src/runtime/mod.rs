//! Watches, caches and the sync loop. Jobs of other controllers are dropped before they
//! reach the cache; pods are watched by the label every Job pod carries.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::act::execute::{self, EventSink, ExecuteError, Executor, Step};
use crate::cluster::expectations::Expectations;
use crate::cluster::pod_decode::{WatchedPod, unwrap_watched};
use crate::cluster::pod_index::{PodIndex, controller_of, pods_of};
use crate::cluster::selector_watches::SelectorWatches;
use crate::cluster::status_batch::{self, StatusBatcher};
use crate::config::BUILT_IN_MANAGER;
use crate::edge::metrics::SharedMetrics;
use crate::plan::{self, BackoffRecord, Snapshot};

use crate::cluster::selector_watches::CONTROLLER_UID_LABEL;

/// A sync plans and applies at most this many steps before yielding to other Jobs.
const MAX_STEPS_PER_SYNC: usize = 6;

/// A Job whose planning took `t` is not synced again until `PLANNING_PACE × t` after its
/// sync ended, so one Job with thousands of pods spends at most 1 / (1 + PLANNING_PACE)
/// of a core re-reading them; the pod events of the pause are handled by one sync.
/// Planning a Job of a few pods takes microseconds, so they see no pause.
const PLANNING_PACE: u32 = 3;

/// Pauses shorter than this are not kept (no entry for the Jobs of a few pods).
const MIN_PACING_PAUSE: Duration = Duration::from_millis(1);

/// Jobs triggered by a watch event whose sync has not started yet: the controller's
/// queue, deduplicated as it is, for the `queue_depth` gauge.
#[derive(Clone, Default)]
pub struct Pending {
    keys: Arc<Mutex<HashSet<ObjectRef<Job>>>>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Pending {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        Pending {
            keys: Arc::default(),
            gauge,
        }
    }

    fn add(&self, key: ObjectRef<Job>) {
        let mut keys = self.keys.lock().expect("pending lock");
        keys.insert(key);
        self.gauge.set(keys.len() as i64);
    }

    fn started(&self, key: &ObjectRef<Job>) {
        let mut keys = self.keys.lock().expect("pending lock");
        keys.remove(key);
        self.gauge.set(keys.len() as i64);
    }
}

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
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Execute(#[from] ExecuteError),
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    // Never plan from an empty pod cache: that would create every pod again.
    ctx.caches.wait_until_ready().await;
    let uid = job.uid().unwrap_or_default();
    let not_before = ctx
        .not_before
        .lock()
        .expect("pacing lock")
        .get(&uid)
        .copied();
    // Too soon after the last sync: come back when due (not holding a worker meanwhile).
    if let Some(wait) = not_before.and_then(|at| at.checked_duration_since(Instant::now())) {
        return Ok(Action::requeue(wait));
    }
    ctx.pending.started(&ObjectRef::from_obj(&*job));
    let started = Instant::now();
    let mut planning = Duration::ZERO;
    let result = sync(job.clone(), &ctx, &mut planning).await;
    let pause = planning * PLANNING_PACE;
    let mut pacing = ctx.not_before.lock().expect("pacing lock");
    if pause >= MIN_PACING_PAUSE {
        pacing.insert(uid.clone(), Instant::now() + pause);
    } else {
        pacing.remove(&uid);
    }
    drop(pacing);
    match &result {
        Ok(_) => {
            ctx.metrics.observe_sync("success", started.elapsed());
            ctx.errors.lock().expect("errors lock").remove(&uid);
        }
        Err(SyncError::Execute(e)) => {
            ctx.metrics.observe_sync("error", started.elapsed());
            ctx.metrics
                .reconcile_errors
                .get_or_create(&crate::edge::metrics::ErrorLabel {
                    kind: e.kind().into(),
                })
                .inc();
        }
    }
    result
}

/// Adds the time spent reading caches and planning (not waiting on the apiserver) to
/// `planning`.
async fn sync(job: Arc<Job>, ctx: &Context, planning: &mut Duration) -> Result<Action, SyncError> {
    let job_ref = ObjectRef::from_obj(&*job);
    // A manualSelector Job's pods are in a watch of its own; never plan before it listed.
    let Ok(selected) = ctx.selector_watches.pods_store(&job).await else {
        debug!(job = %job_ref, "the Job's selector watch has not listed yet");
        return Ok(Action::requeue(Duration::from_millis(500)));
    };
    let mut fresh: Option<Arc<Job>> = None;
    for _ in 0..MAX_STEPS_PER_SYNC {
        let planning_started = Instant::now();
        let cached = match fresh.take().or_else(|| ctx.jobs.get(&job_ref)) {
            Some(j) if j.uid() == job.uid() => j,
            _ => return Ok(Action::await_change()),
        };
        let (owned, orphans) = pods_of(&ctx.pods, &ctx.pod_index, selected.as_ref(), &cached);
        let view = ctx.expectations.view(cached, owned, &orphans);
        let uid = view.job.uid().unwrap_or_default();
        let backoff = ctx
            .backoff
            .lock()
            .expect("backoff lock")
            .get(&uid)
            .cloned()
            .unwrap_or_default();
        let snapshot = Snapshot {
            job: &view.job,
            pods: view.pods.iter().map(|p| &**p).collect(),
            orphans: orphans.iter().map(|p| &**p).collect(),
            finalizer_removed: &view.finalizer_removed,
            backoff: &backoff,
            now: Timestamp::now(),
        };
        let mut plan = plan::plan(&snapshot);
        let held = hold_counter_only_status(ctx, &view.job, &uid, &mut plan);
        *planning += planning_started.elapsed();
        let keep_backoff = |ctx: &Context, record: BackoffRecord| {
            ctx.backoff
                .lock()
                .expect("backoff lock")
                .insert(uid.clone(), record);
        };
        let requeue = plan.requeue_after;
        // The backoff record counts failures the status records: keep it only once that
        // status is written, or a retried sync would count the same failures again.
        let backoff_after_write = plan.status.is_some().then(|| plan.backoff.clone());
        // A held status still counts these failures: its backoff record waits with it.
        if plan.status.is_none() && !held {
            keep_backoff(ctx, plan.backoff.clone());
        }
        if plan.is_noop() {
            return Ok(action_for(requeue));
        }
        let executor = Executor {
            client: &ctx.client,
            expectations: &ctx.expectations,
            events: &ctx.events,
            metrics: &ctx.metrics,
        };
        let writes_status = plan.status.is_some();
        let finishes = plan.outcome.finished.is_some();
        let step = executor.apply(&view.job, &view.pods, plan).await?;
        if let (Step::Settled | Step::Again, true) = (&step, writes_status) {
            if finishes {
                ctx.batcher.forget(&uid);
            } else {
                ctx.batcher.written(&uid, Instant::now());
            }
        }
        if let (Step::Settled | Step::Again, Some(record)) = (&step, backoff_after_write) {
            keep_backoff(ctx, record);
        }
        match step {
            Step::Settled => return Ok(action_for(requeue)),
            Step::Again => {}
            Step::Conflict(None) => return Ok(Action::await_change()),
            Step::Conflict(Some(job)) => {
                debug!(job = %job_ref, "status write conflicted; planning again from the live Job");
                fresh = Some(job);
            }
        }
    }
    // Still moving: come back soon, after other Jobs had their turn.
    Ok(Action::requeue(Duration::from_millis(50)))
}

/// Holds back a status write that only moves counters (see [`status_batch`]): the status
/// and the finalizer removals that depend on it wait, pod creates and deletes go ahead,
/// and the Job is planned again when the write is due. True when the write was held.
fn hold_counter_only_status(ctx: &Context, job: &Job, uid: &str, plan: &mut plan::Plan) -> bool {
    let Some(next) = plan.status.as_ref() else {
        return false;
    };
    if !plan.events.is_empty() || plan.outcome.finished.is_some() {
        return false;
    }
    let urgency = status_batch::urgency(job.status.as_ref(), next);
    let Some(wait) = ctx.batcher.hold(uid, urgency, Instant::now()) else {
        return false;
    };
    plan.status = None;
    plan.remove_finalizers.clear();
    plan.outcome.pods_finished.clear();
    plan.outcome.failure_policy_actions.clear();
    plan.requeue_after = Some(plan.requeue_after.map_or(wait, |r| r.min(wait)));
    ctx.metrics.status_writes_held.inc();
    true
}

fn action_for(requeue: Option<Duration>) -> Action {
    match requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }
}

fn error_policy(job: Arc<Job>, error: &SyncError, ctx: Arc<Context>) -> Action {
    let uid = job.uid().unwrap_or_default();
    let failures = {
        let mut errors = ctx.errors.lock().expect("errors lock");
        let n = errors.entry(uid).or_default();
        *n += 1;
        *n
    };
    let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    // A sync that fails once is routine (a pod gone, a quota hit); keep retrying, louder.
    if failures > 3 {
        warn!(job = %key, failures, error = %error, "sync keeps failing");
    } else {
        info!(job = %key, error = %error, "sync failed; retrying");
    }
    Action::requeue(execute::error_backoff(failures - 1))
}

/// Drops every watch event for a Job that is not ours, and reports our deleted Jobs.
fn ours_only(
    ownership: Ownership,
    deleted: mpsc::UnboundedSender<Arc<Job>>,
) -> impl FnMut(watcher::Result<Event<Job>>) -> future::Ready<Option<watcher::Result<Event<Job>>>> {
    move |event| {
        let keep = match &event {
            Ok(Event::Apply(job)) | Ok(Event::InitApply(job)) => ownership.owns(job),
            Ok(Event::Delete(job)) => {
                let ours = ownership.owns(job);
                if ours {
                    deleted.send(Arc::new(job.clone())).ok();
                }
                ours
            }
            _ => true,
        };
        future::ready(keep.then_some(event))
    }
}

/// The Job a pod event should wake: its controller, or for an orphan every Job in its
/// namespace whose selector matches it.
fn jobs_for_pod(jobs: &Store<Job>, pod: &Pod) -> Vec<ObjectRef<Job>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(pod) {
        if owner.kind == "Job" {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return vec![];
    }
    jobs.state()
        .into_iter()
        .filter(|job| job.namespace().as_deref() == Some(ns.as_str()))
        .filter(|job| {
            job.spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .and_then(|s| Selector::try_from(s).ok())
                .is_some_and(|s| s.matches(pod.labels()))
        })
        .map(|job| ObjectRef::from_obj(&*job))
        .collect()
}

/// Removes the tracking finalizer from the pods of our deleted Jobs: nothing else will
/// count them any more, and the finalizer would keep them forever.
async fn release_pods_of_deleted_jobs(
    ctx: Arc<Context>,
    mut deleted: mpsc::UnboundedReceiver<Arc<Job>>,
) {
    while let Some(job) = deleted.recv().await {
        let uid = job.uid().unwrap_or_default();
        let ns = job.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let mut owned = ctx.pod_index.controlled_by(&ctx.pods, &uid);
        owned.extend(
            ctx.selector_watches
                .cached_pods(&uid)
                .into_iter()
                .filter(|p| controller_of(p).is_some_and(|o| o.uid == uid)),
        );
        ctx.selector_watches.stop(&uid);
        let holding: Vec<_> = owned
            .iter()
            .filter(|p| execute::has_tracking_finalizer(p))
            .collect();
        for pod in &holding {
            if let Err(e) = execute::remove_finalizer(&api, &pod.name_any()).await
                && execute::code_of(&e) != Some(404)
            {
                warn!(pod = %format!("{ns}/{}", pod.name_any()), error = %e,
                    "could not remove the tracking finalizer of a deleted Job's pod");
            }
        }
        if !holding.is_empty() {
            info!(job = %format!("{ns}/{}", job.name_any()), pods = holding.len(),
                "Job deleted; removed tracking finalizers from its pods");
        }
        ctx.expectations.forget(&uid);
        ctx.batcher.forget(&uid);
        ctx.backoff.lock().expect("backoff lock").remove(&uid);
        ctx.errors.lock().expect("errors lock").remove(&uid);
        ctx.not_before.lock().expect("pacing lock").remove(&uid);
    }
}

/// A pod whose labels stop matching our watch's selector leaves the cache as if deleted.
/// If a Job of ours still controls it and it still exists without matching the Job's
/// selector, release it: drop our ownerReference and the tracking finalizer (the
/// built-in controller releases such pods and cleans up orphans' finalizers too).
async fn release_pods_that_left_the_selector(
    client: Client,
    jobs: Store<Job>,
    mut left: mpsc::UnboundedReceiver<Arc<Pod>>,
) {
    while let Some(pod) = left.recv().await {
        debug!(pod = %pod.name_any(), "pod left the watch's selector");
        let Some(owner) = controller_of(&pod).cloned() else {
            continue;
        };
        let ns = pod.namespace().unwrap_or_default();
        let Some(job) = jobs.get(&ObjectRef::new(&owner.name).within(&ns)) else {
            continue;
        };
        if job.uid().as_deref() != Some(owner.uid.as_str()) {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let key = format!("{ns}/{}", pod.name_any());
        let live = match api.get_opt(&pod.name_any()).await {
            Ok(Some(live)) => live,
            Ok(None) => continue,
            Err(e) => {
                warn!(pod = %key, error = %e, "could not read a pod that left the Job's selector");
                continue;
            }
        };
        let selector = job
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .and_then(|s| Selector::try_from(s).ok());
        let still_matches = selector.is_some_and(|s| s.matches(live.labels()));
        let still_ours = controller_of(&live).is_some_and(|o| o.uid == owner.uid);
        if still_matches || !still_ours || live.metadata.deletion_timestamp.is_some() {
            debug!(pod = %key, still_matches, still_ours, "pod is not for release");
            continue;
        }
        let patch = serde_json::json!({
            "metadata": {
                "uid": live.uid(),
                "ownerReferences": [{"$patch": "delete", "uid": owner.uid}],
                "$deleteFromPrimitiveList/finalizers": [crate::plan::TRACKING_FINALIZER],
            }
        });
        let params = kube::api::PatchParams::default();
        match api
            .patch(
                &live.name_any(),
                &params,
                &kube::api::Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => info!(job = %format!("{ns}/{}", job.name_any()), pod = %key,
                "released a pod that no longer matches the Job's selector"),
            Err(e) if execute::code_of(&e) == Some(404) => {}
            Err(e) => warn!(pod = %key, error = %e, "could not release a pod"),
        }
    }
}

/// Strips the managed fields, which we never read. Nothing else: the status write sends
/// the cached metadata back, and the `/status` endpoint stores what it is sent (a dropped
/// annotation would be deleted), while a write without managed fields keeps the stored ones.
fn slim_job(job: &mut Job) {
    job.managed_fields_mut().clear();
}

#[derive(Clone)]
pub struct RuntimeConfig {
    pub ownership: Ownership,
    pub concurrency: u16,
    pub reporter_instance: String,
    /// Least time between two counter-only status writes of one Job.
    pub status_batch_period: Duration,
    /// How long a change of only active/ready/terminating may wait.
    pub status_gauge_delay: Duration,
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
    let (job_store, job_writer): (Store<Job>, Writer<Job>) = reflector::store();
    let (pod_store, pod_writer): (Store<Pod>, Writer<Pod>) = reflector::store();

    // One namespace: a namespaced watch. Several: watch all and keep those.
    let single_ns = (config.ownership.namespaces.len() == 1)
        .then(|| config.ownership.namespaces.iter().next().cloned())
        .flatten();
    let (jobs_api, pods_api): (Api<Job>, Api<WatchedPod>) = match &single_ns {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let namespaces = config.ownership.namespaces.clone();

    let pending = Pending::new(metrics.queue_depth.clone());
    let (deleted_tx, deleted_rx) = mpsc::unbounded_channel();
    let (left_tx, left_rx) = mpsc::unbounded_channel();
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    let selector_watches = SelectorWatches::new(client.clone(), wake_tx, left_tx.clone());
    let managed_jobs = metrics.managed_jobs.clone();
    let job_events = watcher(jobs_api, watcher::Config::default())
        .default_backoff()
        .filter_map(ours_only(config.ownership.clone(), deleted_tx))
        .modify(slim_job)
        .reflect(job_writer)
        .inspect({
            // A Job deleted while the watch was down leaves no Delete event behind.
            let watches = selector_watches.clone();
            let jobs = job_store.clone();
            move |event| {
                if let Ok(Event::InitDone) = event {
                    watches.retain_jobs_in(&jobs);
                }
            }
        })
        .applied_objects()
        .inspect({
            let pending = pending.clone();
            let jobs = job_store.clone();
            let managed_jobs = managed_jobs.clone();
            move |job| {
                if let Ok(job) = job {
                    pending.add(ObjectRef::from_obj(job));
                }
                managed_jobs.set(jobs.len() as i64);
            }
        });
    let pod_index = PodIndex::default();
    let pod_events = watcher(
        pods_api,
        watcher::Config::default().labels(CONTROLLER_UID_LABEL),
    )
    .default_backoff()
    .map_ok(unwrap_watched)
    .filter_map(move |event| {
        let keep = match &event {
            Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) | Ok(Event::Delete(p)) => {
                namespaces.is_empty()
                    || namespaces.contains(p.metadata.namespace.as_deref().unwrap_or_default())
            }
            _ => true,
        };
        // A "delete" of a pod nobody deleted: its labels no longer match the watch. (Not
        // only pods with the tracking finalizer: the built-in controller strips it from
        // any pod it sees orphaned, even for a moment.)
        if let Ok(Event::Delete(p)) = &event
            && keep
            && p.metadata.deletion_timestamp.is_none()
            && controller_of(p).is_some_and(|o| o.kind == "Job")
        {
            left_tx.send(Arc::new(p.clone())).ok();
        }
        future::ready(keep.then_some(event))
    })
    .reflect(pod_writer)
    .inspect({
        let index = pod_index.clone();
        move |event| {
            if let Ok(event) = event {
                index.apply(event);
            }
        }
    })
    .touched_objects();

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "jobkeeper".into(),
            instance: Some(config.reporter_instance.clone()),
        },
    );
    let (events, publish_events) = EventSink::new(recorder);
    let expectations = Expectations::default();
    let (caches, watch_stores) = Caches::new(job_store.clone(), pod_store.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        jobs: job_store.clone(),
        pods: pod_store.clone(),
        pod_index: pod_index.clone(),
        expectations: expectations.clone(),
        backoff: Mutex::default(),
        errors: Mutex::default(),
        events,
        metrics: metrics.clone(),
        caches: caches.clone(),
        pending: pending.clone(),
        batcher: Arc::new(StatusBatcher::new(
            config.status_batch_period,
            config.status_gauge_delay,
        )),
        not_before: Mutex::default(),
        selector_watches,
    });
    let jobs_for_mapper = job_store.clone();
    let release = release_pods_that_left_the_selector(client.clone(), job_store.clone(), left_rx);
    let cleanup = release_pods_of_deleted_jobs(ctx.clone(), deleted_rx);
    let jobs_gauge = job_store.clone();
    let run = Controller::for_stream(job_events, job_store)
        .watches_stream(pod_events, {
            let pending = pending.clone();
            move |pod| {
                let jobs = jobs_for_pod(&jobs_for_mapper, &pod);
                // Only Jobs in our cache get synced; others never leave the queue.
                for job in jobs.iter().filter(|j| jobs_for_mapper.get(j).is_some()) {
                    pending.add(job.clone());
                }
                jobs
            }
        })
        .reconcile_on(wake_rx.inspect({
            let pending = pending.clone();
            move |job| pending.add(job.clone())
        }))
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(move |result| {
            managed_jobs.set(jobs_gauge.len() as i64);
            if let Err(e) = result {
                match e {
                    controller::Error::ObjectNotFound(_) => {}
                    controller::Error::ReconcilerFailed(..) => {}
                    other => error!(error = %other, "controller stream error"),
                }
            }
            future::ready(())
        });
    let run = async move {
        tokio::select! {
            _ = run => {}
            _ = cleanup => {}
            _ = watch_stores => {}
            _ = publish_events => {}
            _ = release => {}
        }
    };
    (caches, run)
}

use kube::runtime::watcher::watcher;

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
