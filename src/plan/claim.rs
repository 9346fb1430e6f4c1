//! Which pods are the Job's (upstream's pod claiming): owned pods that stopped matching the
//! selector are released, orphans that match are adopted.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Pod;

use super::pods::{self, pod_ref, uid};
use super::spec::Spec;
use super::{Plan, RELEASED_ANNOTATION, Snapshot, TRACKING_FINALIZER, plural};

/// The pods this sync works with.
pub struct Claimed<'a> {
    /// Owned and adopted pods matching the selector, oldest first.
    pub owned: Vec<&'a Pod>,
    adopted: HashSet<&'a str>,
    finalizer_removed: &'a HashSet<String>,
}

impl Claimed<'_> {
    /// Whether the pod holds the tracking finalizer as this sync sees it: adopted pods get it
    /// with the adoption patch, and a removal already done counts even if the cache lags.
    pub fn tracked(&self, pod: &Pod) -> bool {
        // Cheapest test first: most pods of a big Job are finished and untracked.
        (pods::has_finalizer(pod, TRACKING_FINALIZER) || self.adopted.contains(uid(pod)))
            && !self.finalizer_removed.contains(uid(pod))
    }
}

/// Claims the Job's pods; `plan.adopt` and `plan.release` say what changes hands.
pub fn claim<'a>(snapshot: &Snapshot<'a>, spec: &Spec<'_>, plan: &mut Plan) -> Claimed<'a> {
    let selector = spec.job_spec.selector.as_ref();
    let mut owned: Vec<&Pod> = Vec::new();
    let mut seen: HashSet<&str> =
        HashSet::with_capacity(snapshot.pods.len() + snapshot.orphans.len());
    for &p in &snapshot.pods {
        if !seen.insert(uid(p)) {
            continue;
        }
        if pods::selector_matches(selector, p.metadata.labels.as_ref()) {
            owned.push(p);
        } else if !spec.deleting {
            plan.release.push(pod_ref(p));
        }
    }
    let mut adopted: HashSet<&str> = HashSet::new();
    if !spec.deleting {
        for &p in &snapshot.orphans {
            if !pods::is_deleting(p)
                && pods::selector_matches(selector, p.metadata.labels.as_ref())
                && seen.insert(uid(p))
            {
                plan.adopt.push(pod_ref(p));
                adopted.insert(uid(p));
                owned.push(p);
            }
        }
    }
    if !plan.adopt.is_empty() {
        plan.decisions.push(format!(
            "adopting {}",
            plural(plan.adopt.len(), "orphan pod")
        ));
    }
    if !plan.release.is_empty() {
        plan.decisions.push(format!(
            "releasing {} pods that no longer match the selector",
            plan.release.len()
        ));
    }
    owned.sort_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref(), &a.metadata.name)
            .cmp(&(b.metadata.creation_timestamp.as_ref(), &b.metadata.name))
    });
    Claimed {
        owned,
        adopted,
        finalizer_removed: snapshot.finalizer_removed,
    }
}

/// Puts the tracking finalizer back on pods released for deletion (see
/// [`RELEASED_ANNOTATION`]) that succeeded before they were deleted: their success counts,
/// where upstream deletes them uncounted and runs the work again. A released pod still
/// running is an active pod like any other (deleted if still in excess, else restored
/// once it succeeds); one that failed stays uncounted, as upstream leaves it.
pub fn restore_released(claimed: &Claimed<'_>, plan: &mut Plan) {
    let restore: Vec<_> = claimed
        .owned
        .iter()
        .filter(|p| {
            pods::has_annotation(p, RELEASED_ANNOTATION)
                && !claimed.tracked(p)
                && !pods::is_deleting(p)
                && pods::is_succeeded(p)
        })
        .map(|p| pod_ref(p))
        .collect();
    if !restore.is_empty() {
        plan.decisions.push(format!(
            "keeping {} that succeeded while being deleted",
            plural(restore.len(), "pod")
        ));
        plan.restore = restore;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use crate::plan::testing::*;
    use crate::plan::*;

    /// A pod released for deletion (finalizer off, marked) whose delete did not happen.
    fn released(name: &str, phase: &str) -> P {
        pod(name, phase)
            .no_finalizer()
            .annotation(RELEASED_ANNOTATION, "true")
    }

    #[test]
    fn matching_orphan_is_adopted_and_unmatching_pod_released() {
        let j = running(job(Some(3), 2), 1);
        let pods = [pod("mine", "Running"), pod("stray", "Running").unlabelled()];
        let orphans = [
            pod("orphan", "Running").orphan(),
            pod("gone", "Running").orphan().deleting(),
        ];
        let p = plan_with(
            &j,
            &pods,
            &orphans,
            &HashSet::new(),
            &BackoffRecord::default(),
        );
        assert_eq!(names(&p.adopt), vec!["orphan"]);
        assert_eq!(names(&p.release), vec!["stray"]);
        assert!(p.create.is_empty(), "the adopted pod fills the second slot");
        assert_eq!(p.status.unwrap().active, Some(2));
    }

    #[test]
    fn adopted_finished_orphan_is_counted() {
        let j = running(job(Some(3), 1), 1);
        let orphans = [pod("orphan", "Succeeded").orphan()];
        let p = plan_with(
            &j,
            &[pod("a", "Running")],
            &orphans,
            &HashSet::new(),
            &BackoffRecord::default(),
        );
        assert_eq!(uncounted(&p.status.unwrap()).0, vec!["orphan-uid"]);
    }

    #[test]
    fn a_released_pod_that_succeeded_before_its_delete_is_restored_and_only_it() {
        let j = running(job(Some(4), 2), 2);
        let pods = [
            released("restore", "Succeeded"),
            released("running", "Running"),
            released("failed", "Failed"),
            released("deleting", "Succeeded").deleting(),
            pod("tracked", "Succeeded").annotation(RELEASED_ANNOTATION, "true"),
            pod("counted", "Succeeded").no_finalizer(),
        ];
        let p = run(&j, &pods);
        assert_eq!(names(&p.restore), vec!["restore"]);
        assert!(
            p.decisions
                .iter()
                .any(|d| d == "keeping 1 pod that succeeded while being deleted"),
            "{:?}",
            p.decisions
        );
        // Not counted in this plan, nor anything else done: the next one counts it once
        // its finalizer is back.
        assert!(p.status.is_none());
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    /// Chaos run 2026-12-05-d: index 0's pod, released for a scale-down, succeeded before
    /// its delete; the plan that restored it also found index 0 missing and made a second
    /// pod for it, and both succeeded.
    #[test]
    fn no_second_pod_for_the_index_of_a_pod_being_restored() {
        let j = running(indexed_job(3, 1), 0);
        let pods = [released("zero", "Succeeded").index(0)];
        let p = run(&j, &pods);
        assert_eq!(names(&p.restore), vec!["zero"]);
        assert!(p.create.is_empty(), "{:?}", p.decisions);
        // Once restored (finalizer back, mark gone), index 0 is counted and index 1 made.
        let restored = [pod("zero", "Succeeded").index(0)];
        let p = run(&j, &restored);
        assert!(p.restore.is_empty());
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].index, Some(1));
    }
}
