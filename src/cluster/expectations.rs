//! What the controller has written but its caches may not show yet.
//!
//! Watches lag writes. Without this record a sync that runs between a write and its watch
//! event would plan from the old state: create a pod again, or count a finished pod whose
//! tracking finalizer is already gone a second time. Upstream keeps the same three kinds of
//! expectations (creates, deletes, finalizer removals); we keep the written objects
//! themselves so the planner sees the state as it is, not just counts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::cluster::pod_index::controller_of;
use crate::plan::pods::has_tracking_finalizer;

/// Entries the watch never confirms (a pod created and deleted before the cache saw it)
/// expire, as upstream's expectations do after five minutes.
const EXPECTATION_TTL: Duration = Duration::from_secs(300);

#[derive(Default)]
struct JobExpectations {
    /// Pods we created, by UID, until the pod cache has them.
    created: HashMap<String, (Arc<Pod>, Instant)>,
    /// Pods we deleted, by UID, until the cache shows them deleting or gone.
    deleted: HashMap<String, Instant>,
    /// Pods whose tracking finalizer we removed, until the cache shows it gone.
    finalizer_removed: HashMap<String, Instant>,
    /// The Job as our last status write returned it, and every version it supersedes.
    written: Option<Written>,
}

/// Our latest status write and the Job versions older than it that the cache may still
/// show: the versions our writes replaced and the versions they returned before it.
struct Written {
    job: Arc<Job>,
    superseded: HashSet<String>,
}

impl Written {
    fn version(&self) -> Option<&str> {
        self.job.metadata.resource_version.as_deref()
    }

    /// Whether a cached Job at `version` is older than our write. Versions are opaque in
    /// the API's contract, so those our own writes superseded are known to be older; an
    /// etcd-backed apiserver also hands out increasing integers, which tells of an older
    /// version we never saw (one from before a fresh read after a 409).
    fn is_newer_than(&self, version: Option<&str>) -> bool {
        let Some(version) = version else {
            return true;
        };
        if self.superseded.contains(version) {
            return true;
        }
        match (
            self.version().map(str::parse::<u64>),
            version.parse::<u64>(),
        ) {
            (Some(Ok(ours)), Ok(cached)) => cached < ours,
            _ => false,
        }
    }
}

/// Per-Job expectations, keyed by Job UID.
#[derive(Default, Clone)]
pub struct Expectations {
    inner: Arc<Mutex<HashMap<String, JobExpectations>>>,
}

/// The state of one Job as the controller knows it: cache plus its own recent writes.
pub struct View {
    pub job: Arc<Job>,
    pub pods: Vec<Arc<Pod>>,
    pub finalizer_removed: HashSet<String>,
    /// When the oldest pod we created that the cache has not shown yet stops being
    /// expected: the Job must be looked at again by then, as no event may come for it.
    pub unconfirmed_until: Option<Duration>,
}

fn uid_of(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

impl Expectations {
    /// Merges the cached Job and pods with what this controller wrote since, and forgets
    /// every expectation the cache now confirms.
    /// `orphans` are cached pods without a controller that the Job's selector matches: a
    /// pod we created that the cache shows orphaned is no longer ours to overlay.
    pub fn view(&self, job: Arc<Job>, cached_pods: Vec<Arc<Pod>>, orphans: &[Arc<Pod>]) -> View {
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let mut all = self.inner.lock().expect("expectations lock");
        let Some(exp) = all.get_mut(&uid) else {
            return View {
                job,
                pods: cached_pods,
                finalizer_removed: HashSet::new(),
                unconfirmed_until: None,
            };
        };
        let now = Instant::now();
        let fresh = |since: &Instant| now.duration_since(*since) < EXPECTATION_TTL;

        // A cached Job older than our last write (several writes may be in flight to the
        // watch) shows less than we know; the same version or a newer one (someone else's
        // write) is the truth, so trust the cache.
        let job = match &exp.written {
            Some(written) if written.is_newer_than(job.metadata.resource_version.as_deref()) => {
                written.job.clone()
            }
            _ => {
                exp.written = None;
                job
            }
        };

        // By UID, so confirming each expectation is one lookup, not a scan of the pods.
        let owned: HashMap<&str, &Pod> = cached_pods.iter().map(|p| (uid_of(p), &**p)).collect();
        exp.created.retain(|uid, (_, since)| {
            !owned.contains_key(uid.as_str())
                && !orphans.iter().any(|p| uid_of(p) == uid)
                && fresh(since)
        });
        exp.deleted.retain(|uid, since| {
            fresh(since)
                && owned
                    .get(uid.as_str())
                    .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
        });
        exp.finalizer_removed.retain(|uid, since| {
            fresh(since)
                && owned
                    .get(uid.as_str())
                    .is_some_and(|p| has_tracking_finalizer(p))
        });
        drop(owned);

        let mut pods = cached_pods;
        if !exp.deleted.is_empty() {
            for pod in pods.iter_mut() {
                if exp.deleted.contains_key(uid_of(pod)) {
                    let mut deleting = (**pod).clone();
                    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
                    *pod = Arc::new(deleting);
                }
            }
        }
        pods.extend(exp.created.values().map(|(pod, _)| pod.clone()));
        let finalizer_removed = exp.finalizer_removed.keys().cloned().collect();
        let unconfirmed_until = exp
            .created
            .values()
            .map(|(_, since)| EXPECTATION_TTL.saturating_sub(now.duration_since(*since)))
            .min();

        if exp.created.is_empty()
            && exp.deleted.is_empty()
            && exp.finalizer_removed.is_empty()
            && exp.written.is_none()
        {
            all.remove(&uid);
        }
        View {
            job,
            pods,
            finalizer_removed,
            unconfirmed_until,
        }
    }

    /// The pod watch no longer shows the pod: it was deleted, or its labels left the
    /// watch's selector. A creation of ours the cache never confirmed while it was there
    /// (its arrival and its departure both came between two syncs) will not be confirmed
    /// now, so it stops counting; kept, it would stand in the view as a live pod.
    pub fn pod_gone(&self, pod: &Pod) {
        let Some(owner) = controller_of(pod) else {
            return;
        };
        let mut all = self.inner.lock().expect("expectations lock");
        if let Some(exp) = all.get_mut(&owner.uid) {
            exp.created.remove(uid_of(pod));
        }
    }

    fn with<R>(&self, job_uid: &str, f: impl FnOnce(&mut JobExpectations) -> R) -> R {
        let mut all = self.inner.lock().expect("expectations lock");
        f(all.entry(job_uid.to_string()).or_default())
    }

    pub fn created(&self, job_uid: &str, pod: Pod) {
        let uid = uid_of(&pod).to_string();
        self.with(job_uid, |e| {
            e.created.insert(uid, (Arc::new(pod), Instant::now()))
        });
    }

    pub fn deleted(&self, job_uid: &str, pod_uid: &str) {
        self.with(job_uid, |e| {
            // A pod we created and deleted before the cache showed it may never be seen
            // (the watch can bring its creation and deletion between two syncs): stop
            // expecting it, or it would stay in the view as a live pod until the TTL.
            e.created.remove(pod_uid);
            e.deleted.insert(pod_uid.to_string(), Instant::now())
        });
    }

    pub fn finalizer_removed(&self, job_uid: &str, pod_uid: &str) {
        self.with(job_uid, |e| {
            e.finalizer_removed
                .insert(pod_uid.to_string(), Instant::now())
        });
    }

    /// A pod whose finalizer we removed has it back (it succeeded before its delete): the
    /// removal is no longer to be expected.
    pub fn finalizer_restored(&self, job_uid: &str, pod_uid: &str) {
        self.with(job_uid, |e| e.finalizer_removed.remove(pod_uid));
    }

    /// Records the Job our status write returned, replacing `replaced_version`. Versions an
    /// earlier write replaced or returned stay superseded until the cache catches up.
    pub fn status_written(&self, replaced_version: String, job: Arc<Job>) {
        let uid = job.metadata.uid.clone().unwrap_or_default();
        self.with(&uid, |e| {
            let mut superseded = HashSet::new();
            if let Some(earlier) = e.written.take() {
                superseded.extend(earlier.version().map(str::to_string));
                superseded.extend(earlier.superseded);
            }
            superseded.insert(replaced_version);
            e.written = Some(Written { job, superseded });
        });
    }

    /// Forgets a Job entirely (it was deleted).
    pub fn forget(&self, job_uid: &str) {
        self.inner
            .lock()
            .expect("expectations lock")
            .remove(job_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::TRACKING_FINALIZER;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn job(uid: &str, rv: &str) -> Arc<Job> {
        Arc::new(Job {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn pod(uid: &str, finalizer: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                finalizers: finalizer.then(|| vec![TRACKING_FINALIZER.to_string()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn created_pod_is_seen_until_the_cache_has_it() {
        let e = Expectations::default();
        e.created("j", pod("p1", true));
        let v = e.view(job("j", "1"), vec![], &[]);
        assert_eq!(v.pods.len(), 1);
        let v = e.view(job("j", "1"), vec![Arc::new(pod("p1", true))], &[]);
        assert_eq!(v.pods.len(), 1, "the cached copy replaces the expectation");
        assert!(e.inner.lock().unwrap().is_empty());
    }

    /// A manualSelector pod relabelled out of the selector moments after we created it: the
    /// watch brought its arrival and its departure between two syncs. (Kept, it stood in
    /// the view as a live pod and the Job never replaced it.)
    #[test]
    fn created_pod_the_watch_showed_and_lost_between_two_views_is_not_expected() {
        let e = Expectations::default();
        let mut created = pod("p1", true);
        created.metadata.owner_references = Some(vec![OwnerReference {
            uid: "j".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        e.created("j", created.clone());
        e.pod_gone(&created);
        let v = e.view(job("j", "1"), vec![], &[]);
        assert!(v.pods.is_empty());
        assert_eq!(v.unconfirmed_until, None);
    }

    #[test]
    fn a_view_with_an_unconfirmed_creation_says_when_to_look_again() {
        let e = Expectations::default();
        e.created("j", pod("p1", true));
        let v = e.view(job("j", "1"), vec![], &[]);
        let until = v.unconfirmed_until.expect("a creation is unconfirmed");
        assert!(until <= EXPECTATION_TTL && until > EXPECTATION_TTL / 2);
        let v = e.view(job("j", "1"), vec![Arc::new(pod("p1", true))], &[]);
        assert_eq!(v.unconfirmed_until, None);
    }

    #[test]
    fn created_pod_seen_orphaned_is_not_overlaid_as_owned() {
        let e = Expectations::default();
        e.created("j", pod("p1", true));
        let orphan = Arc::new(pod("p1", false));
        let v = e.view(job("j", "1"), vec![], &[orphan]);
        assert!(v.pods.is_empty(), "the orphan is the planner's to adopt");
    }

    #[test]
    fn deleted_pod_is_shown_deleting_until_the_cache_agrees() {
        let e = Expectations::default();
        e.deleted("j", "p1");
        let v = e.view(job("j", "1"), vec![Arc::new(pod("p1", true))], &[]);
        assert!(v.pods[0].metadata.deletion_timestamp.is_some());
        let v = e.view(job("j", "1"), vec![], &[]);
        assert!(v.pods.is_empty());
        assert!(e.inner.lock().unwrap().is_empty());
    }

    #[test]
    fn pod_created_and_deleted_unseen_leaves_the_view() {
        let e = Expectations::default();
        e.created("j", pod("p1", true));
        assert_eq!(e.view(job("j", "1"), vec![], &[]).pods.len(), 1);
        // Deleted before the cache showed it; the watch may bring both events at once.
        e.deleted("j", "p1");
        let v = e.view(job("j", "1"), vec![], &[]);
        assert!(v.pods.is_empty(), "no phantom pod");
        assert!(e.inner.lock().unwrap().is_empty());
    }

    #[test]
    fn a_restored_finalizer_is_no_longer_expected_removed() {
        let e = Expectations::default();
        e.finalizer_removed("j", "p1");
        e.finalizer_restored("j", "p1");
        let v = e.view(job("j", "1"), vec![Arc::new(pod("p1", true))], &[]);
        assert!(!v.finalizer_removed.contains("p1"));
    }

    #[test]
    fn removed_finalizer_is_reported_until_the_cache_drops_it() {
        let e = Expectations::default();
        e.finalizer_removed("j", "p1");
        let v = e.view(job("j", "1"), vec![Arc::new(pod("p1", true))], &[]);
        assert!(v.finalizer_removed.contains("p1"));
        let v = e.view(job("j", "1"), vec![Arc::new(pod("p1", false))], &[]);
        assert!(v.finalizer_removed.is_empty());
    }

    #[test]
    fn stale_cached_job_is_replaced_by_our_write() {
        let e = Expectations::default();
        e.status_written("1".into(), job("j", "2"));
        let v = e.view(job("j", "1"), vec![], &[]);
        assert_eq!(v.job.metadata.resource_version.as_deref(), Some("2"));
        let v = e.view(job("j", "3"), vec![], &[]);
        assert_eq!(v.job.metadata.resource_version.as_deref(), Some("3"));
    }

    /// Two writes in a row (e.g. SuccessCriteriaMet, then Complete) while the cache still
    /// shows the Job from before the first: that Job is older than both. Trusting it planned
    /// pods for a finished Job (found by the chaos run).
    #[test]
    fn a_cache_two_writes_behind_is_still_stale() {
        let e = Expectations::default();
        e.status_written("1".into(), job("j", "2"));
        e.status_written("2".into(), job("j", "3"));
        for cached in ["1", "2"] {
            let v = e.view(job("j", cached), vec![], &[]);
            assert_eq!(v.job.metadata.resource_version.as_deref(), Some("3"));
        }
        let v = e.view(job("j", "3"), vec![], &[]);
        assert_eq!(v.job.metadata.resource_version.as_deref(), Some("3"));
        assert!(
            e.inner.lock().unwrap().is_empty(),
            "caught up: nothing kept"
        );
    }

    /// After a 409 the Job is read afresh, which can be newer than the cache: a version
    /// the write never replaced but older by the apiserver's counter is still stale.
    #[test]
    fn a_cache_behind_a_fresh_read_is_stale() {
        let e = Expectations::default();
        e.status_written("7".into(), job("j", "8"));
        let v = e.view(job("j", "5"), vec![], &[]);
        assert_eq!(v.job.metadata.resource_version.as_deref(), Some("8"));
        let v = e.view(job("j", "9"), vec![], &[]);
        assert_eq!(v.job.metadata.resource_version.as_deref(), Some("9"));
    }

    /// Versions that are not numbers are compared only with those our writes replaced.
    #[test]
    fn opaque_versions_trust_the_cache_unless_superseded() {
        let e = Expectations::default();
        e.status_written("a".into(), job("j", "b"));
        let v = e.view(job("j", "a"), vec![], &[]);
        assert_eq!(v.job.metadata.resource_version.as_deref(), Some("b"));
        let v = e.view(job("j", "z"), vec![], &[]);
        assert_eq!(v.job.metadata.resource_version.as_deref(), Some("z"));
    }
}
