//! The Job and pod watches: what reaches the caches, and which Jobs a pod event wakes.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::core::SelectorExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use super::cleanup::OrphanHint;
use super::{Context, Ownership, Pending};

/// Where the watches send what may have left pods holding the finalizer with no Job.
pub(super) type OrphanHints = mpsc::UnboundedSender<OrphanHint>;
use crate::cluster::expectations::Expectations;
use crate::cluster::lenient::{Lenient, unwrap_event};
use crate::cluster::pod_decode::{WatchedPod, unwrap_watched};
use crate::cluster::pod_index::{PodIndex, controller_of, selector_of};
use crate::cluster::watch_expiry;

/// The APIs the Job and pod watches list.
pub(super) fn apis(
    client: &Client,
    namespaces: &HashSet<String>,
) -> (Api<Lenient<Job>>, Api<WatchedPod>) {
    // One namespace: a namespaced watch. Several: watch all and keep those.
    let single_ns = (namespaces.len() == 1)
        .then(|| namespaces.iter().next().cloned())
        .flatten();
    match &single_ns {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    }
}

/// The Job watch: our Jobs only, slimmed, into the Job store; our deleted Jobs to
/// `deleted`, each (re)list to `orphans`; each Job it applies counted as pending. Jobs are
/// decoded [`Lenient`]: one Job whose status another writer gave a time of year 9999's
/// last day would otherwise fail the watch and every relist.
pub(super) fn job_watch(
    api: Api<Lenient<Job>>,
    config: watcher::Config,
    writer: Writer<Job>,
    ownership: Ownership,
    (deleted, orphans): (mpsc::UnboundedSender<Arc<Job>>, OrphanHints),
    ctx: &Context,
) -> impl Stream<Item = Result<Job, watcher::Error>> + Send + use<> {
    let selector_watches = ctx.selector_watches.clone();
    let jobs = ctx.jobs.clone();
    let pending = ctx.pending.clone();
    let managed_jobs = ctx.metrics.managed_jobs.clone();
    watcher(api, config)
        .inspect(|event| watch_expiry::log_if_expired("jobs", event))
        .default_backoff()
        .map_ok(unwrap_event)
        .filter_map(ours_only(ownership, deleted))
        .modify(slim_job)
        .reflect(writer)
        .inspect({
            // A Job deleted while the watch was down leaves no Delete event behind.
            let jobs = jobs.clone();
            move |event| {
                if let Ok(Event::InitDone) = event {
                    selector_watches.retain_jobs_in(&jobs);
                    orphans.send(OrphanHint::Relisted).ok();
                }
            }
        })
        .applied_objects()
        .inspect(move |job| {
            if let Ok(job) = job {
                pending.add(ObjectRef::from_obj(job));
            }
            managed_jobs.set(jobs.len() as i64);
        })
}

/// The pod watch (`config` selects the controller-uid label): the pods of Jobs with a
/// generated selector in our namespaces, into the pod store and then the index; pods that
/// left the watch's selector to `left`; each (re)list and each pod that may be orphaned to
/// `orphans`.
pub(super) fn pod_watch(
    api: Api<WatchedPod>,
    config: watcher::Config,
    writer: Writer<Pod>,
    namespaces: HashSet<String>,
    (left, orphans): (mpsc::UnboundedSender<Arc<Pod>>, OrphanHints),
    (index, expectations): (PodIndex, Expectations),
) -> impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static {
    watcher(api, config)
        .inspect(|event| watch_expiry::log_if_expired("pods", event))
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
                left.send(Arc::new(p.clone())).ok();
            }
            future::ready(keep.then_some(event))
        })
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                index.apply(event);
            }
            if let Ok(Event::Delete(pod)) = event {
                expectations.pod_gone(pod);
            }
            let hint = match event {
                Ok(Event::InitDone) => Some(OrphanHint::Relisted),
                Ok(Event::Apply(pod)) => OrphanHint::for_pod(pod),
                _ => None,
            };
            if let Some(hint) = hint {
                orphans.send(hint).ok();
            }
        })
        .touched_objects()
}

/// The pod watch's mapper: the Jobs a pod event wakes, those in our cache counted as
/// pending.
pub(super) fn jobs_to_wake(
    jobs: Store<Job>,
    pending: Pending,
) -> impl Fn(Pod) -> Vec<ObjectRef<Job>> + Send + Sync + 'static {
    move |pod| {
        let wake = jobs_for_pod(&jobs, &pod);
        // Only Jobs in our cache get synced; others never leave the queue.
        for job in wake.iter().filter(|j| jobs.get(j).is_some()) {
            pending.add(job.clone());
        }
        wake
    }
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
        .filter(|job| selector_of(job).is_some_and(|s| s.matches(pod.labels())))
        .map(|job| ObjectRef::from_obj(&*job))
        .collect()
}

/// Strips the managed fields, which we never read. Nothing else: the status write sends
/// the cached metadata back, and the `/status` endpoint stores what it is sent (a dropped
/// annotation would be deleted), while a write without managed fields keeps the stored ones.
fn slim_job(job: &mut Job) {
    job.managed_fields_mut().clear();
}
