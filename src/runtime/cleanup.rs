//! Pods nobody syncs any more: those of our deleted Jobs, those that left their Job's
//! selector while it still controls them, and orphans the watches come across.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::core::SelectorExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Context, Ownership};
use crate::act::execute;
use crate::cluster::lenient::Lenient;
use crate::cluster::pod_decode::WatchedPod;
use crate::cluster::pod_index::{controller_of, selector_of};
use crate::plan::pods::has_tracking_finalizer;
use crate::plan::status;

/// The cleanup tasks, run until any channel closes.
pub(super) fn cleanup_tasks(
    ctx: Arc<Context>,
    ownership: Ownership,
    deleted: mpsc::UnboundedReceiver<Arc<Job>>,
    left: mpsc::UnboundedReceiver<Arc<Pod>>,
    orphans: mpsc::UnboundedReceiver<OrphanHint>,
) -> impl Future<Output = ()> {
    let release = release_pods_that_left_the_selector(ctx.client.clone(), ctx.jobs.clone(), left);
    let orphans = release_orphaned_pods(ctx.clone(), ownership, orphans);
    let cleanup = release_pods_of_deleted_jobs(ctx, deleted);
    async move {
        tokio::select! {
            _ = release => {}
            _ = orphans => {}
            _ = cleanup => {}
        }
    }
}

/// Where a pod may have been left holding the tracking finalizer with no Job to count it.
#[derive(Debug)]
pub(super) enum OrphanHint {
    /// A watch (re)listed: a Job deleted during the relist, a failover or while the
    /// controller was down left no Delete event behind. Look at every cached pod.
    Relisted,
    /// A pod without a controller, or being deleted, still holds the finalizer (e.g. one
    /// created while its Job was being deleted, after the Delete event's cleanup ran).
    Pod(Arc<Pod>),
}

impl OrphanHint {
    /// Whether a pod event is worth a look, from the pod alone: it holds the finalizer and
    /// has no controller or is being deleted (the garbage collector deletes the pods of a
    /// deleted Job). The running pods of other controllers' Jobs cost nothing.
    pub(super) fn for_pod(pod: &Pod) -> Option<OrphanHint> {
        let candidate = has_tracking_finalizer(pod)
            && (controller_of(pod).is_none() || pod.metadata.deletion_timestamp.is_some());
        candidate.then(|| OrphanHint::Pod(Arc::new(pod.clone())))
    }
}

/// Removes the tracking finalizer from pods no Job will count, as upstream's orphan
/// handling does (`syncOrphanPod`): pods without a controller, and pods whose Job is gone
/// or finished. The live Delete event's cleanup ([`release_pods_of_deleted_jobs`]) misses
/// the Jobs deleted while no watch was listening and the pods that appear after it ran.
async fn release_orphaned_pods(
    ctx: Arc<Context>,
    ownership: Ownership,
    mut hints: mpsc::UnboundedReceiver<OrphanHint>,
) {
    while let Some(hint) = hints.recv().await {
        // Never judge from an empty cache: every pod would look orphaned.
        ctx.caches.wait_until_ready().await;
        let mut pods = Vec::new();
        let mut relisted = false;
        for hint in std::iter::once(hint).chain(std::iter::from_fn(|| hints.try_recv().ok())) {
            match hint {
                OrphanHint::Relisted => relisted = true,
                OrphanHint::Pod(pod) => pods.push(pod),
            }
        }
        if relisted {
            pods = ctx.pods.state();
        }
        // One look at each owner per round (many pods share one Job).
        let mut owners = HashMap::new();
        for pod in pods.iter().filter(|p| may_be_orphaned(&ctx, p)) {
            release_if_orphaned(&ctx, &ownership, pod, &mut owners).await;
        }
    }
}

/// From the caches: whether a pod may hold the finalizer with no Job to count it. The pods
/// of a Job in our cache are its sync's business (a deleting or finished Job's sync removes
/// their finalizers too); pods of Jobs we do not have are looked at only when they have no
/// controller or are being deleted.
fn may_be_orphaned(ctx: &Context, pod: &Pod) -> bool {
    if !has_tracking_finalizer(pod) {
        return false;
    }
    let Some(owner) = controller_of(pod) else {
        return true;
    };
    if owner.kind != "Job" || !owner.api_version.starts_with("batch/") {
        return false;
    }
    let ns = pod.namespace().unwrap_or_default();
    let cached = ctx.jobs.get(&ObjectRef::new(&owner.name).within(&ns));
    if cached.is_some_and(|job| job.uid().as_deref() == Some(owner.uid.as_str())) {
        return false;
    }
    pod.metadata.deletion_timestamp.is_some()
}

/// Removes the finalizer of `pod` if nothing will count it. `owners` keeps, by Job UID,
/// why the pods of a Job already looked at are orphaned (None: they are not).
async fn release_if_orphaned(
    ctx: &Context,
    ownership: &Ownership,
    pod: &Pod,
    owners: &mut HashMap<String, Option<&'static str>>,
) {
    let ns = pod.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", pod.name_any());
    // An orphan may be adopted any moment: release only the version judged here (a newer
    // one comes with its own event and hint).
    let mut version = None;
    let reason = match controller_of(pod) {
        None => {
            version = pod.metadata.resource_version.as_deref();
            Some("it has no controller")
        }
        Some(owner) => match owners.get(&owner.uid) {
            Some(reason) => *reason,
            None => match why_no_job_counts(ctx, ownership, &ns, &owner.name, &owner.uid).await {
                Ok(reason) => *owners.entry(owner.uid.clone()).or_insert(reason),
                Err(e) => {
                    warn!(pod = %key, error = %e, "could not read the Job of a pod holding the tracking finalizer");
                    return;
                }
            },
        },
    };
    let Some(reason) = reason else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match execute::remove_finalizer_at(&api, &pod.name_any(), version).await {
        Ok(()) => info!(pod = %key, reason,
            "removed the tracking finalizer of a pod no Job will count"),
        Err(e) if execute::code_of(&e) == Some(404) => {}
        Err(e) if execute::code_of(&e) == Some(409) => {
            debug!(pod = %key, "orphan changed before its finalizer came off; its next event decides");
        }
        Err(e) => warn!(pod = %key, error = %e,
            "could not remove the tracking finalizer of an orphaned pod"),
    }
}

/// Why the pods controlled by the Job `name` (UID `uid`) have no Job left to count them, or
/// None when one will or it is not ours to say. Asks the API, not the cache, which may lag
/// (a Job just created may not be in it yet).
///
/// A Job that no longer exists has no managedBy to go by: its pods' finalizers go whoever
/// managed it. Nothing can count them any more, the built-in controller's orphan handling
/// removes them for any such pod too, and with `--all-jobs` nobody else would; the patch
/// removes only that finalizer, so doing it twice is harmless.
async fn why_no_job_counts(
    ctx: &Context,
    ownership: &Ownership,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<Option<&'static str>, kube::Error> {
    let api: Api<Lenient<Job>> = Api::namespaced(ctx.client.clone(), ns);
    let reason = match api.get_opt(name).await?.map(|j| j.0) {
        None => Some("its Job is gone"),
        Some(job) if job.uid().as_deref() != Some(uid) => Some("its Job is gone"),
        // Another controller's Job: its pods are that controller's business.
        Some(job) if !ownership.owns(&job) => None,
        Some(job) if job.status.as_ref().and_then(status::finished).is_some() => {
            Some("its Job is finished")
        }
        Some(_) => None,
    };
    Ok(reason)
}

/// Removes the tracking finalizer from the pods of our deleted Jobs: nothing else will
/// count them any more, and the finalizer would keep them forever. The removals run (and
/// retry) inside this task, so they stop with the controller when leadership is lost.
async fn release_pods_of_deleted_jobs(
    ctx: Arc<Context>,
    mut deleted: mpsc::UnboundedReceiver<Arc<Job>>,
) {
    let mut removals = FuturesUnordered::new();
    while let Some(job) = next_driving(&mut deleted, &mut removals).await {
        // kube-runtime never syncs a Job no longer in the cache: its place in the queue
        // would stay forever.
        ctx.pending.forget(&ObjectRef::from_obj(&*job));
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
        let holding: Vec<String> = owned
            .iter()
            .filter(|p| has_tracking_finalizer(p))
            .map(|p| p.name_any())
            .collect();
        let job = format!("{ns}/{}", job.name_any());
        if holding.is_empty() {
            // Its pods were gone or released already (the built-in controller and the
            // garbage collector may be first when the Delete event comes late).
            debug!(job = %job, "Job deleted; none of its cached pods holds the tracking finalizer");
        } else {
            removals.push(remove_finalizers_until_done(api, job, holding));
        }
        ctx.expectations.forget(&uid);
        ctx.batcher.forget(&uid);
        ctx.backoff.lock().expect("backoff lock").remove(&uid);
        ctx.errors.lock().expect("errors lock").remove(&uid);
        ctx.not_before.lock().expect("pacing lock").remove(&uid);
    }
}

/// The next message of `rx`, driving `running` (the retried writes of earlier messages)
/// while waiting; None once `rx` closes.
async fn next_driving<T, F: Future<Output = ()>>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    running: &mut FuturesUnordered<F>,
) -> Option<T> {
    loop {
        tokio::select! {
            message = rx.recv() => return message,
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

/// Tries a cleanup write this many times at most (1 s doubling to 32 s between tries): an
/// apiserver restart takes seconds to minutes. What is still left then is the sweep's.
const CLEANUP_TRIES: u32 = 8;

/// The pause after failed try `attempt` (from 1) of a cleanup write: 1 s doubling up to
/// 32 s, none after the last try.
async fn pause_after(attempt: u32) {
    if attempt < CLEANUP_TRIES {
        let pause = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5));
        tokio::time::sleep(pause).await;
    }
}

/// Takes the tracking finalizer off a deleted Job's pods, retrying the failures with
/// backoff: nothing else may ever look at those pods again (with `--all-jobs` no other
/// controller does), so one failed request during an outage must not leak them.
async fn remove_finalizers_until_done(api: Api<Pod>, job: String, mut pods: Vec<String>) {
    let total = pods.len();
    let released = pods.clone();
    for attempt in 1..=CLEANUP_TRIES {
        let mut failed = Vec::new();
        for pod in pods {
            match execute::remove_finalizer(&api, &pod).await {
                Ok(()) => {}
                Err(e) if execute::code_of(&e) == Some(404) => {}
                Err(e) => {
                    warn!(job = %job, pod = %pod, attempt, error = %e,
                        "could not remove the tracking finalizer of a deleted Job's pod; retrying");
                    failed.push(pod);
                }
            }
        }
        if failed.is_empty() {
            let names = crate::explain::names(released.iter().map(String::as_str));
            info!(job = %job, pods = total, names = %names,
                "Job deleted; removed tracking finalizers from its pods");
            return;
        }
        pods = failed;
        pause_after(attempt).await;
    }
    warn!(job = %job, pods = ?pods,
        "gave up removing the tracking finalizer of a deleted Job's pods; the next sweep will");
}

/// A pod whose labels stop matching our watch's selector leaves the cache as if deleted.
/// If a Job of ours still controls it and it still exists without matching the Job's
/// selector, release it: drop our ownerReference and the tracking finalizer (the
/// built-in controller releases such pods and cleans up orphans' finalizers too). Nothing
/// else will see the pod again (it left the watch), so a failed release is retried.
async fn release_pods_that_left_the_selector(
    client: Client,
    jobs: Store<Job>,
    mut left: mpsc::UnboundedReceiver<Arc<Pod>>,
) {
    let mut releases = FuturesUnordered::new();
    while let Some(pod) = next_driving(&mut left, &mut releases).await {
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
        releases.push(release_until_done(client.clone(), job, pod.name_any()));
    }
}

/// [`release_left_pod`], retried with backoff on failure as [`remove_finalizers_until_done`].
async fn release_until_done(client: Client, job: Arc<Job>, pod: String) {
    let ns = job.namespace().unwrap_or_default();
    let api: Api<WatchedPod> = Api::namespaced(client, &ns);
    let key = format!("{ns}/{pod}");
    for attempt in 1..=CLEANUP_TRIES {
        match release_left_pod(&api, &job, &pod).await {
            Ok(()) => return,
            Err(e) => warn!(pod = %key, attempt, error = %e,
                "could not release a pod that left its Job's selector; retrying"),
        }
        pause_after(attempt).await;
    }
    warn!(pod = %key, "gave up releasing a pod that left its Job's selector");
}

/// Releases `pod` from `job` if it still exists, is still the Job's and does not match
/// its selector (read live: the watch only said it left).
async fn release_left_pod(api: &Api<WatchedPod>, job: &Job, pod: &str) -> Result<(), kube::Error> {
    let ns = job.namespace().unwrap_or_default();
    let key = format!("{ns}/{pod}");
    let job_uid = job.uid().unwrap_or_default();
    // Read as the pod watch reads pods: slim, times read leniently.
    let live = match api.get_opt(pod).await? {
        Some(WatchedPod(live)) => live,
        None => return Ok(()),
    };
    let still_matches = selector_of(job).is_some_and(|s| s.matches(live.labels()));
    let still_ours = controller_of(&live).is_some_and(|o| o.uid == job_uid);
    if still_matches || !still_ours || live.metadata.deletion_timestamp.is_some() {
        debug!(pod = %key, still_matches, still_ours, "pod is not for release");
        return Ok(());
    }
    let patch = serde_json::json!({
        "metadata": {
            "uid": live.uid(),
            "ownerReferences": [{"$patch": "delete", "uid": job_uid}],
            "$deleteFromPrimitiveList/finalizers": [crate::plan::TRACKING_FINALIZER],
        }
    });
    let params = kube::api::PatchParams::default();
    match api
        .patch(pod, &params, &kube::api::Patch::Strategic(patch))
        .await
    {
        Ok(_) => info!(job = %format!("{ns}/{}", job.name_any()), pod = %key,
            "released a pod that no longer matches the Job's selector"),
        Err(e) if execute::code_of(&e) == Some(404) => {}
        // Replaced by a pod of the same name: not the one that left.
        Err(e) if execute::code_of(&e) == Some(409) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}
