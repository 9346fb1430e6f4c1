//! One Job's sync: wait for the caches, pace, read the Job and its pods through the
//! expectations, plan, hold counter-only status writes, act; and what a failed sync does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info, warn};

use super::Context;
use super::workers::{Lane, Owed, Workers};
use crate::act::execute::{self, ExecuteError, Executor, Step};
use crate::act::load::ApiLoad;
use crate::cluster::pod_index::pods_of;
use crate::cluster::status_batch;
use crate::plan::{self, BackoffRecord, Snapshot};

/// A sync plans and applies at most this many steps before yielding to other Jobs.
const MAX_STEPS_PER_SYNC: usize = 6;

/// A Job whose planning took `t` is not synced again until `PLANNING_PACE × t` after its
/// sync ended, so one Job with thousands of pods spends at most 1 / (1 + PLANNING_PACE)
/// of a core re-reading them; the pod events of the pause are handled by one sync.
/// Planning a Job of a few pods takes microseconds, so they see no pause.
const PLANNING_PACE: u32 = 3;

/// Pauses shorter than this are not kept (no entry for the Jobs of a few pods).
const MIN_PACING_PAUSE: Duration = Duration::from_millis(1);

/// Jobs triggered by a watch event whose sync has not started yet, with when they were
/// first triggered (and first told a pod finished): the controller's queue, deduplicated
/// as it is, for the `queue_depth` gauge, the queue part of the [`ApiLoad`] and the
/// workers' order.
#[derive(Clone)]
pub struct Pending {
    keys: Arc<Mutex<HashMap<ObjectRef<Job>, Triggered>>>,
    /// Jobs whose last sync ended with finished pods still to count (a held status
    /// write, a sync that yielded its worker between two counting steps), since when:
    /// their requeue comes back in the count lane. Not in the queue: a timer holds them.
    counts_left: Arc<Mutex<HashMap<ObjectRef<Job>, Instant>>>,
    gauge: prometheus_client::metrics::gauge::Gauge,
    load: Arc<ApiLoad>,
    /// A sync already waiting for a worker when its Job's pod finishes moves up to the
    /// count lane there (kube-runtime holds the new trigger back until that sync ends).
    workers: Workers,
}

#[derive(Clone, Copy)]
struct Triggered {
    first: Instant,
    /// The first trigger by a pod that finished and is not counted yet.
    count: Option<Instant>,
}

impl Pending {
    pub(super) fn new(
        gauge: prometheus_client::metrics::gauge::Gauge,
        load: Arc<ApiLoad>,
        workers: Workers,
    ) -> Self {
        Pending {
            keys: Arc::default(),
            counts_left: Arc::default(),
            gauge,
            load,
            workers,
        }
    }

    /// What the Job is owed, since when: its first trigger not yet served, even if it came
    /// while the Job's previous sync ran (kube-runtime holds it back until then), in the
    /// count lane from the first pod that finished; else other work owed from now (a
    /// requeue after a wait of the sync's own choosing), in the count lane if its last sync
    /// left pods to count.
    fn owed(&self, key: &ObjectRef<Job>) -> Owed {
        let triggered = self.keys.lock().expect("pending lock").get(key).copied();
        let left = self
            .counts_left
            .lock()
            .expect("pending lock")
            .get(key)
            .copied();
        let count = triggered
            .and_then(|t| t.count)
            .into_iter()
            .chain(left)
            .min();
        match (count, triggered) {
            (Some(since), _) => Owed {
                lane: Lane::Count,
                since,
            },
            (None, Some(Triggered { first, .. })) => Owed::other(first),
            (None, None) => Owed::other(Instant::now()),
        }
    }

    /// The Job's sync ends with finished pods still to count, owed since `since`.
    fn count_left(&self, key: ObjectRef<Job>, since: Instant) {
        let mut left = self.counts_left.lock().expect("pending lock");
        left.entry(key).or_insert(since);
    }

    pub(super) fn add(&self, key: ObjectRef<Job>) {
        self.trigger(key, false);
    }

    /// A pod of the Job finished and still holds its tracking finalizer.
    pub(super) fn add_count(&self, key: ObjectRef<Job>) {
        self.trigger(key, true);
    }

    fn trigger(&self, key: ObjectRef<Job>, count: bool) {
        let now = Instant::now();
        let mut keys = self.keys.lock().expect("pending lock");
        let triggered = keys.entry(key.clone()).or_insert(Triggered {
            first: now,
            count: None,
        });
        let count_since = count.then(|| *triggered.count.get_or_insert(now));
        self.gauge.set(keys.len() as i64);
        drop(keys);
        if let Some(since) = count_since {
            let owed = Owed {
                lane: Lane::Count,
                since,
            };
            self.workers.promote(&key, owed);
        }
    }

    /// The Job was deleted.
    pub(super) fn forget(&self, key: &ObjectRef<Job>) {
        self.counts_left.lock().expect("pending lock").remove(key);
        let mut keys = self.keys.lock().expect("pending lock");
        keys.remove(key);
        self.gauge.set(keys.len() as i64);
    }

    fn started(&self, key: &ObjectRef<Job>) {
        self.counts_left.lock().expect("pending lock").remove(key);
        let mut keys = self.keys.lock().expect("pending lock");
        let triggered = keys.remove(key);
        self.gauge.set(keys.len() as i64);
        drop(keys);
        if let Some(triggered) = triggered {
            let now = Instant::now();
            self.load
                .queued(now.saturating_duration_since(triggered.first), now);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    /// A pod create or delete failed though the rest of the plan was applied.
    #[error("{source}")]
    PodWrites {
        source: ExecuteError,
        /// When the plan itself asked to look again (a held status write, a deadline):
        /// the retry comes no later, however long the error backoff has grown.
        requeue_after: Option<Duration>,
    },
}

impl SyncError {
    fn execute_error(&self) -> &ExecuteError {
        match self {
            SyncError::Execute(e) | SyncError::PodWrites { source: e, .. } => e,
        }
    }
}

pub(super) async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, SyncError> {
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
    // Our turn, after the work owed longer. None: the controller is stopping; the Job's
    // trigger is the next leader's (it syncs every Job when it starts).
    let job_ref = ObjectRef::from_obj(&*job);
    let owed = ctx.pending.owed(&job_ref);
    let Some(_worker) = ctx.workers.turn(&job_ref, owed).await else {
        return Ok(Action::await_change());
    };
    ctx.pending.started(&job_ref);
    // The sync's future is large (every request it may make, inline): boxed only once the
    // Job has a worker, so the Jobs waiting for one cost a few hundred bytes each.
    Box::pin(run(job, ctx, (uid, owed.lane))).await
}

/// The sync proper, with its pacing and metrics.
async fn run(
    job: Arc<Job>,
    ctx: Arc<Context>,
    (uid, lane): (String, Lane),
) -> Result<Action, SyncError> {
    let started = Instant::now();
    let mut planning = Duration::ZERO;
    let result = sync(job.clone(), &ctx, lane, &mut planning).await;
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
        Err(e) => {
            ctx.metrics.observe_sync("error", started.elapsed());
            ctx.metrics
                .reconcile_errors
                .get_or_create(&crate::edge::metrics::ErrorLabel {
                    kind: e.execute_error().kind().into(),
                })
                .inc();
        }
    }
    result
}

/// Adds the time spent reading caches and planning (not waiting on the apiserver) to
/// `planning`.
async fn sync(
    job: Arc<Job>,
    ctx: &Context,
    lane: Lane,
    planning: &mut Duration,
) -> Result<Action, SyncError> {
    let job_ref = ObjectRef::from_obj(&*job);
    // A manualSelector Job's pods are in a watch of its own; never plan before it listed.
    let Ok(selected) = ctx.selector_watches.pods_store(&job).await else {
        debug!(job = %job_ref, "the Job's selector watch has not listed yet");
        return Ok(Action::requeue(Duration::from_millis(500)));
    };
    let mut fresh: Option<Arc<Job>> = None;
    let owed = Owed {
        lane,
        since: Instant::now(),
    };
    // While tokens are short, a sync that counts ahead of other work makes no creates.
    let mut deferred_creates = false;
    for step_number in 0..MAX_STEPS_PER_SYNC {
        let planning_started = Instant::now();
        let cached = match fresh.take().or_else(|| ctx.jobs.get(&job_ref)) {
            Some(j) if j.uid() == job.uid() => j,
            _ => return Ok(Action::await_change()),
        };
        let (owned, orphans) = pods_of(&ctx.pods, &ctx.pod_index, selected.as_ref(), &cached);
        let view = ctx.expectations.view(cached, owned, &orphans);
        let uid = view.job.uid().unwrap_or_default();
        let backoff = ctx.backoff_of(&uid);
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
        // A pod we created that no watch event confirms stops being expected after a
        // while; look again then, whatever the plan says.
        if let Some(until) = view.unconfirmed_until {
            plan.requeue_at_most(until);
        }
        let requeue = plan.requeue_after;
        // The backoff record counts failures the status records: keep it only once that
        // status is written, or a retried sync would count the same failures again.
        let backoff_after_write = plan.status.is_some().then(|| plan.backoff.clone());
        // A held status still counts these failures: its backoff record waits with it.
        if plan.status.is_none() && !held {
            ctx.keep_backoff(&uid, plan.backoff.clone());
        }
        if held {
            ctx.pending.count_left(job_ref.clone(), owed.since);
        }
        if plan.is_noop() {
            return Ok(action_for(requeue));
        }
        let finishes = plan.outcome.finished.is_some();
        let applied = ctx
            .executor(lane)
            .apply(&view.job, &view.pods, plan)
            .await?;
        deferred_creates |= applied.creates_deferred;
        let step = applied.step;
        // The batch period runs from the write, not from the end of the finalizer
        // removals after it: when tokens are short those can outlast the period, and the
        // counting write that follows them then goes in this sync instead of a later one.
        match (applied.status_written_at, finishes) {
            (Some(_), true) => ctx.batcher.forget(&uid),
            (Some(at), false) => ctx.batcher.written(&uid, at),
            (None, _) => {}
        }
        if let (Step::Settled | Step::Again, Some(record)) = (&step, backoff_after_write) {
            ctx.keep_backoff(&uid, record);
        }
        // The rest of the plan went through; the failed pod write is retried with
        // backoff, not at once (a quota or admission webhook would only refuse again).
        if let Some(source) = applied.pod_write_error {
            return Err(SyncError::PodWrites {
                source,
                requeue_after: requeue,
            });
        }
        match step {
            // The creates left for later: in the other lane, behind the work owed before.
            Step::Settled if deferred_creates => break,
            Step::Settled => return Ok(action_for(requeue)),
            // The step after finalizer removals counts those pods; past it, a Job whose
            // pods keep finishing yields its worker to syncs more urgent than its own. Its
            // pods still to count bring it back in the count lane, as after the last step.
            Step::Again => {
                let last = step_number + 1 == MAX_STEPS_PER_SYNC;
                let yields = step_number >= 1
                    && ctx
                        .workers
                        .first_waiting()
                        .is_some_and(|first| first < owed);
                if last || yields {
                    ctx.pending.count_left(job_ref.clone(), owed.since);
                    break;
                }
            }
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

impl Context {
    fn backoff_of(&self, uid: &str) -> BackoffRecord {
        let records = self.backoff.lock().expect("backoff lock");
        records.get(uid).cloned().unwrap_or_default()
    }

    fn keep_backoff(&self, uid: &str, record: BackoffRecord) {
        let mut records = self.backoff.lock().expect("backoff lock");
        records.insert(uid.to_string(), record);
    }

    fn executor(&self, lane: Lane) -> Executor<'_> {
        let tokens_short = self.batcher.tokens_short(Instant::now());
        Executor {
            client: &self.client,
            create_budget: &self.create_budget,
            expectations: &self.expectations,
            events: &self.events,
            metrics: &self.metrics,
            tokens_short,
            defer_creates: tokens_short && lane == Lane::Count,
        }
    }
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
    plan.requeue_at_most(wait);
    ctx.metrics.status_writes_held.inc();
    true
}

fn action_for(requeue: Option<Duration>) -> Action {
    match requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }
}

pub(super) fn error_policy(job: Arc<Job>, error: &SyncError, ctx: Arc<Context>) -> Action {
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
    let backoff = execute::error_backoff(failures - 1);
    match error {
        SyncError::PodWrites {
            requeue_after: Some(after),
            ..
        } => Action::requeue(backoff.min(*after)),
        _ => Action::requeue(backoff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Pending {
        let load = Arc::new(ApiLoad::default());
        Pending::new(Default::default(), load, Workers::new(1).0)
    }

    #[test]
    fn a_job_waits_from_its_first_trigger_not_yet_served() {
        let pending = pending();
        let job = ObjectRef::<Job>::new("j").within("ns");
        pending.add(job.clone());
        let first = pending.owed(&job);
        assert_eq!(first.lane, Lane::Other);
        std::thread::sleep(Duration::from_millis(2));
        // Triggered again before its sync started: still one place, the first.
        pending.add(job.clone());
        assert_eq!(pending.owed(&job), first);
        pending.started(&job);
        // Served: a sync without a trigger (a requeue) waits from now.
        assert!(pending.owed(&job) > first);
    }

    #[test]
    fn a_finished_pod_moves_its_job_to_the_count_lane_from_that_trigger() {
        let pending = pending();
        let job = ObjectRef::<Job>::new("j").within("ns");
        pending.add(job.clone());
        std::thread::sleep(Duration::from_millis(2));
        pending.add_count(job.clone());
        let owed = pending.owed(&job);
        assert_eq!(owed.lane, Lane::Count);
        std::thread::sleep(Duration::from_millis(2));
        pending.add_count(job.clone());
        pending.add(job.clone());
        assert_eq!(
            pending.owed(&job),
            owed,
            "the first count trigger keeps its place"
        );
        pending.started(&job);
        assert_eq!(pending.owed(&job).lane, Lane::Other);
        // A sync that left pods to count: its requeue is in the count lane, once.
        let left_at = Instant::now();
        pending.count_left(job.clone(), left_at);
        assert_eq!(
            pending.owed(&job),
            Owed {
                lane: Lane::Count,
                since: left_at
            }
        );
        pending.started(&job);
        assert_eq!(pending.owed(&job).lane, Lane::Other);
        // A deleted Job leaves the queue.
        pending.add_count(job.clone());
        pending.count_left(job.clone(), left_at);
        pending.forget(&job);
        assert!(pending.keys.lock().unwrap().is_empty());
        assert!(pending.counts_left.lock().unwrap().is_empty());
    }

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, Fut>(_: impl FnOnce(A, B, C) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_sync_waiting_for_a_worker_is_small() {
        let waiting = future_size(|job: Arc<Job>, ctx: Arc<Context>, ()| reconcile(job, ctx));
        let syncing = future_size(run);
        assert!(
            waiting <= 512 && syncing > 4 * waiting,
            "waiting {waiting} bytes, syncing {syncing}"
        );
    }
}
