//! The Job and pod watches: what reaches the caches, and which Jobs a pod event wakes.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt, future, stream};
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
use crate::cluster::foreign_jobs::ForeignJobs;
use crate::cluster::lenient::{Lenient, unwrap_event};
use crate::cluster::pod_decode::{WatchedPod, unwrap_watched};
use crate::cluster::pod_index::{PodIndex, controller_of, selector_of};
use crate::cluster::watch_expiry;
use crate::plan::pods::{has_tracking_finalizer, is_finished};

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

/// The Jobs of other controllers: filed in [`ForeignJobs`] by the Job watch, their pods
/// kept out of the pod cache by the pod watch. The pods of such a Job that the pod watch
/// cached before the Job watch saw the Job are sent to `purge`, which the pod watch
/// removes from the cache.
#[derive(Clone)]
pub(super) struct TheirJobs {
    pub foreign: ForeignJobs,
    pub index: PodIndex,
    pub pods: Store<Pod>,
    pub purge: futures::channel::mpsc::UnboundedSender<Pod>,
}

impl TheirJobs {
    fn saw(&self, job: &Job) {
        if self.foreign.saw(job)
            && let Some(uid) = job.metadata.uid.as_deref()
        {
            for pod in self.index.controlled_by(&self.pods, uid) {
                self.purge.unbounded_send(Pod::clone(&pod)).ok();
            }
        }
    }

    /// After a pod (re)list: purges the cached pods of every foreign Job. A Job first seen
    /// while the pods were being listed found none of its pods to purge (the listed pods
    /// reach the store only when the list ends), so they would otherwise stay cached until
    /// their next change, which a pending pod of another controller may never have.
    fn sweep(&self) {
        for pod in self.pods.state() {
            if self.foreign.control(&pod) {
                self.purge.unbounded_send(Pod::clone(&pod)).ok();
            }
        }
    }
}

/// The Job watch: our Jobs only, slimmed, into the Job store; other controllers' Jobs to
/// `theirs`; our deleted Jobs to `deleted`, each (re)list to `orphans`; each Job it applies
/// counted as pending. Jobs are
/// decoded [`Lenient`]: one Job whose status another writer gave a time of year 9999's
/// last day would otherwise fail the watch and every relist.
pub(super) fn job_watch(
    api: Api<Lenient<Job>>,
    config: watcher::Config,
    writer: Writer<Job>,
    (ownership, theirs): (Ownership, TheirJobs),
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
        .filter_map(ours_only(ownership, theirs, deleted))
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
/// generated selector in our namespaces, other controllers' Jobs' pods aside, into the pod
/// store (its size in the `cached_pods` gauge) and then the index; the pods `purge` names
/// out of both; pods that left the
/// watch's selector to `left`; each (re)list and each pod that may be orphaned to
/// `orphans`.
pub(super) fn pod_watch(
    api: Api<WatchedPod>,
    config: watcher::Config,
    (writer, purge): (Writer<Pod>, futures::channel::mpsc::UnboundedReceiver<Pod>),
    (namespaces, theirs): (HashSet<String>, TheirJobs),
    (left, orphans): (mpsc::UnboundedSender<Arc<Pod>>, OrphanHints),
    ctx: &Context,
) -> impl Stream<Item = Result<Pod, watcher::Error>> + Send + use<> {
    let (index, expectations) = (ctx.pod_index.clone(), ctx.expectations.clone());
    let (pods, cached_pods) = (ctx.pods.clone(), ctx.metrics.cached_pods.clone());
    let foreign = theirs.foreign.clone();
    let admitted = watcher(api, config)
        .inspect(|event| watch_expiry::log_if_expired("pods", event))
        .default_backoff()
        .map_ok(unwrap_watched)
        .filter_map({
            let foreign = foreign.clone();
            move |event| future::ready(admit(event, &namespaces, &foreign, &left))
        });
    let purged = purge.map(|pod| Ok(Event::Delete(pod)));
    stream::select(admitted, purged)
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                index.apply(event);
                cached_pods.set(pods.len() as i64);
            }
            match event {
                Ok(Event::Delete(pod)) => expectations.pod_gone(pod),
                Ok(Event::InitDone) => theirs.sweep(),
                _ => {}
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
        // A purged pod wakes no Job.
        .try_filter(move |pod| future::ready(!foreign.control(pod)))
}

/// What of a pod watch event reaches the cache: events of pods in our namespaces, except
/// that a pod of another controller's Job is removed rather than applied (it may have been
/// cached before its Job was known) and left out of a relist. A Delete of a pod nobody
/// deleted goes to `left` too: its labels no longer match the watch. (Not only pods with the
/// tracking finalizer: the built-in controller strips it from any pod it sees orphaned, even
/// for a moment.)
fn admit(
    event: watcher::Result<Event<Pod>>,
    namespaces: &HashSet<String>,
    foreign: &ForeignJobs,
    left: &mpsc::UnboundedSender<Arc<Pod>>,
) -> Option<watcher::Result<Event<Pod>>> {
    let in_our_namespaces = |p: &Pod| {
        namespaces.is_empty()
            || namespaces.contains(p.metadata.namespace.as_deref().unwrap_or_default())
    };
    match event {
        Ok(Event::Apply(p) | Event::InitApply(p) | Event::Delete(p)) if !in_our_namespaces(&p) => {
            None
        }
        Ok(Event::Apply(p)) if foreign.control(&p) => Some(Ok(Event::Delete(p))),
        Ok(Event::InitApply(p)) if foreign.control(&p) => None,
        Ok(Event::Delete(p)) => {
            if p.metadata.deletion_timestamp.is_none()
                && controller_of(&p).is_some_and(|o| o.kind == "Job")
                && !foreign.control(&p)
            {
                left.send(Arc::new(p.clone())).ok();
            }
            Some(Ok(Event::Delete(p)))
        }
        other => Some(other),
    }
}

/// The pod watch's mapper: the Jobs a pod event wakes, those in our cache counted as
/// pending (in the count lane when the pod finished and is still to be counted).
pub(super) fn jobs_to_wake(
    jobs: Store<Job>,
    pending: Pending,
) -> impl Fn(Pod) -> Vec<ObjectRef<Job>> + Send + Sync + 'static {
    move |pod| {
        let wake = jobs_for_pod(&jobs, &pod);
        let to_count = is_finished(&pod) && has_tracking_finalizer(&pod);
        // Only Jobs in our cache get synced; others never leave the queue.
        for job in wake.iter().filter(|j| jobs.get(j).is_some()) {
            if to_count {
                pending.add_count(job.clone());
            } else {
                pending.add(job.clone());
            }
        }
        wake
    }
}

/// Drops every watch event for a Job that is not ours, filing those Jobs in `theirs`,
/// and reports our deleted Jobs.
fn ours_only(
    ownership: Ownership,
    theirs: TheirJobs,
    deleted: mpsc::UnboundedSender<Arc<Job>>,
) -> impl FnMut(watcher::Result<Event<Job>>) -> future::Ready<Option<watcher::Result<Event<Job>>>> {
    move |event| {
        let keep = match &event {
            Ok(Event::Init) => {
                theirs.foreign.relist_started();
                true
            }
            Ok(Event::InitDone) => {
                theirs.foreign.relist_done();
                true
            }
            Ok(Event::Apply(job)) | Ok(Event::InitApply(job)) => {
                let ours = ownership.owns(job);
                if !ours {
                    theirs.saw(job);
                }
                ours
            }
            Ok(Event::Delete(job)) => {
                let ours = ownership.owns(job);
                if ours {
                    deleted.send(Arc::new(job.clone())).ok();
                } else {
                    theirs.foreign.gone(job);
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn job(uid: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn pod(ns: &str, job_uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("{job_uid}-pod")),
                namespace: Some(ns.into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: job_uid.into(),
                    uid: job_uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The kind of event `admit` lets through, if any.
    fn admitted(
        event: Event<Pod>,
        namespaces: &HashSet<String>,
        foreign: &ForeignJobs,
        left: &mpsc::UnboundedSender<Arc<Pod>>,
    ) -> Option<&'static str> {
        admit(Ok(event), namespaces, foreign, left).map(|e| match e {
            Ok(Event::Apply(_)) => "apply",
            Ok(Event::InitApply(_)) => "init-apply",
            Ok(Event::Delete(_)) => "delete",
            _ => "other",
        })
    }

    #[test]
    fn other_controllers_pods_are_removed_not_cached_and_never_released() {
        let foreign = ForeignJobs::default();
        foreign.saw(&job("theirs"));
        let (left, mut left_rx) = mpsc::unbounded_channel();
        let all = HashSet::new();
        let admit = |event| admitted(event, &all, &foreign, &left);
        assert_eq!(admit(Event::Apply(pod("a", "ours"))), Some("apply"));
        assert_eq!(
            admit(Event::InitApply(pod("a", "ours"))),
            Some("init-apply")
        );
        // Theirs: an update removes what may have been cached before the Job was known.
        assert_eq!(admit(Event::Apply(pod("a", "theirs"))), Some("delete"));
        assert_eq!(admit(Event::InitApply(pod("a", "theirs"))), None);
        // A pod leaving the watch's labels is released only when it is ours to release.
        assert_eq!(admit(Event::Delete(pod("a", "theirs"))), Some("delete"));
        assert!(left_rx.try_recv().is_err());
        assert_eq!(admit(Event::Delete(pod("a", "ours"))), Some("delete"));
        assert!(left_rx.try_recv().is_ok());
        // Deleted by someone: not a pod that left the selector.
        let mut deleted = pod("a", "ours");
        deleted.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert_eq!(admit(Event::Delete(deleted)), Some("delete"));
        assert!(left_rx.try_recv().is_err());
    }

    #[test]
    fn foreign_pods_listed_before_their_job_was_seen_are_purged_when_the_list_ends() {
        let (pods, mut writer) = kube::runtime::reflector::store::<Pod>();
        let (purge, mut purged) = futures::channel::mpsc::unbounded();
        let theirs = TheirJobs {
            foreign: ForeignJobs::default(),
            index: PodIndex::default(),
            pods,
            purge,
        };
        let mut list = |event: Event<Pod>| {
            writer.apply_watcher_event(&event);
            theirs.index.apply(&event);
        };
        list(Event::Init);
        list(Event::InitApply(pod("a", "theirs")));
        list(Event::InitApply(pod("a", "ours")));
        // The Job watch files their Job mid-list: nothing of the list is in the store yet.
        theirs.saw(&job("theirs"));
        assert!(purged.try_recv().is_err());
        list(Event::InitDone);
        theirs.sweep();
        let owner = |p: Pod| controller_of(&p).map(|o| o.uid.clone());
        let first = purged.try_recv().ok().and_then(owner);
        assert_eq!(first.as_deref(), Some("theirs"));
        assert!(purged.try_recv().is_err(), "only their pod is purged");
    }

    #[test]
    fn pods_outside_our_namespaces_are_dropped() {
        let foreign = ForeignJobs::default();
        let (left, mut left_rx) = mpsc::unbounded_channel();
        let ours = HashSet::from(["a".to_string()]);
        for event in [
            Event::Apply(pod("b", "ours")),
            Event::InitApply(pod("b", "ours")),
            Event::Delete(pod("b", "ours")),
        ] {
            assert_eq!(admitted(event, &ours, &foreign, &left), None);
        }
        assert!(left_rx.try_recv().is_err());
        assert_eq!(
            admitted(Event::Apply(pod("a", "ours")), &ours, &foreign, &left),
            Some("apply")
        );
        assert_eq!(
            admitted(Event::InitDone, &ours, &foreign, &left),
            Some("other")
        );
    }
}
