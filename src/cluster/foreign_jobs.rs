//! The Jobs another controller syncs. Their pods carry the controller-uid label the pod
//! watch selects by, yet no Job of ours can count or adopt them (a pod that has a
//! controller is never adopted), so the pod watch keeps them out of the cache: in a cluster
//! where most Jobs belong to the built-in controller, the cache holds our pods only.
//!
//! The Job watch files each Job it sees; `spec.managedBy` cannot change, so a Job never
//! moves between ours and theirs. The Job and pod watches are not ordered with each
//! other: pods that reached the cache before their Job did are purged when the Job is
//! first seen ([`ForeignJobs::saw`] says when).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use super::pod_index::controller_of;

/// The UIDs of the Jobs the Job watch saw and we do not own. Cheap to clone; all clones
/// share one set.
#[derive(Clone, Default)]
pub struct ForeignJobs {
    inner: Arc<RwLock<Known>>,
}

#[derive(Default)]
struct Known {
    uids: HashSet<String>,
    /// During a relist: the foreign Jobs listed so far. It replaces `uids` when the relist
    /// ends, dropping the Jobs deleted while the watch was down.
    relisting: Option<HashSet<String>>,
}

impl ForeignJobs {
    /// Files a Job another controller syncs. True when it was not known before: its pods
    /// already in the cache are to be purged.
    pub fn saw(&self, job: &Job) -> bool {
        let Some(uid) = job.metadata.uid.as_deref() else {
            return false;
        };
        let mut known = self.inner.write().expect("foreign Jobs lock");
        if let Some(listed) = known.relisting.as_mut() {
            listed.insert(uid.to_string());
        }
        known.uids.insert(uid.to_string())
    }

    /// A foreign Job was deleted.
    pub fn gone(&self, job: &Job) {
        if let Some(uid) = job.metadata.uid.as_deref() {
            let mut known = self.inner.write().expect("foreign Jobs lock");
            known.uids.remove(uid);
            if let Some(listed) = known.relisting.as_mut() {
                listed.remove(uid);
            }
        }
    }

    /// The Job watch starts a (re)list.
    pub fn relist_started(&self) {
        self.inner.write().expect("foreign Jobs lock").relisting = Some(HashSet::new());
    }

    /// The Job watch's (re)list is complete: the Jobs it listed are all there are.
    pub fn relist_done(&self) {
        let mut known = self.inner.write().expect("foreign Jobs lock");
        if let Some(listed) = known.relisting.take() {
            known.uids = listed;
        }
    }

    /// Whether the pod's controller is a Job another controller syncs.
    pub fn control(&self, pod: &Pod) -> bool {
        let Some(owner) = controller_of(pod) else {
            return false;
        };
        owner.kind == "Job"
            && self
                .inner
                .read()
                .expect("foreign Jobs lock")
                .uids
                .contains(&owner.uid)
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("foreign Jobs lock").uids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn job(uid: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(format!("job-{uid}")),
                uid: Some(uid.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn pod_of(kind: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: kind.into(),
                    name: format!("job-{uid}"),
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_job_is_new_once_and_its_pods_are_foreign_until_it_is_gone() {
        let foreign = ForeignJobs::default();
        assert!(!foreign.control(&pod_of("Job", "a")));
        assert!(foreign.saw(&job("a")));
        assert!(!foreign.saw(&job("a")), "seen again: nothing to purge");
        assert!(foreign.control(&pod_of("Job", "a")));
        assert!(!foreign.control(&pod_of("ReplicaSet", "a")));
        assert!(!foreign.control(&pod_of("Job", "b")));
        assert!(
            !foreign.control(&Pod::default()),
            "an orphan may be ours to adopt"
        );
        foreign.gone(&job("a"));
        assert!(!foreign.control(&pod_of("Job", "a")));
        assert!(
            !foreign.saw(&Job::default()),
            "a Job without a UID is not filed"
        );
        assert!(foreign.is_empty());
    }

    #[test]
    fn a_relist_forgets_the_jobs_it_did_not_list() {
        let foreign = ForeignJobs::default();
        foreign.saw(&job("kept"));
        foreign.saw(&job("deleted-while-down"));
        foreign.relist_started();
        // Until the relist ends, what was known still holds.
        assert!(foreign.control(&pod_of("Job", "deleted-while-down")));
        assert!(!foreign.saw(&job("kept")));
        assert!(foreign.saw(&job("new")));
        foreign.relist_done();
        assert!(foreign.control(&pod_of("Job", "kept")));
        assert!(foreign.control(&pod_of("Job", "new")));
        assert!(!foreign.control(&pod_of("Job", "deleted-while-down")));
        assert_eq!(foreign.len(), 2);
        // A relist_done without a relist changes nothing.
        foreign.relist_done();
        assert_eq!(foreign.len(), 2);
    }
}
