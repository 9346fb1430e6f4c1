//! The Job's pods by state for this sync: active, ready, terminating, and the finished pods
//! the status does not record yet, with the succeeded and failed totals they add up to.

use std::collections::HashSet;

use k8s_openapi::api::batch::v1::JobStatus;
use k8s_openapi::api::core::v1::Pod;

use super::claim::Claimed;
use super::failure_policy;
use super::indexed::Indexes;
use super::pods::{self, uid};
use super::spec::Spec;

pub struct Classified<'a> {
    pub claimed: Claimed<'a>,
    /// Pods neither finished nor being deleted, oldest first.
    pub active: Vec<&'a Pod>,
    pub ready: i32,
    pub terminating: i32,
    /// `succeeded` and `failed` as the status holds them.
    pub counted_succeeded: i32,
    pub counted_failed: i32,
    /// `uncountedTerminatedPods` as the status holds it.
    pub stored_succeeded: &'a [String],
    pub stored_failed: &'a [String],
    stored_succeeded_set: HashSet<&'a str>,
    stored_failed_set: HashSet<&'a str>,
    /// Finished pods holding the tracking finalizer that no uncounted list holds yet.
    pub new_succeeded: Vec<&'a Pod>,
    pub new_failed: Vec<&'a Pod>,
    /// Succeeded pods, counted or not (Indexed: completed indexes).
    pub succeeded: i32,
    /// Failed pods that count towards backoffLimit, counted or not.
    pub failed: i32,
    pub indexes: Indexes<'a>,
}

impl Classified<'_> {
    pub fn stored_as_succeeded(&self, pod: &Pod) -> bool {
        self.stored_succeeded_set.contains(uid(pod))
    }

    pub fn stored_as_failed(&self, pod: &Pod) -> bool {
        self.stored_failed_set.contains(uid(pod))
    }
}

pub fn classify<'a>(
    spec: &Spec<'_>,
    claimed: Claimed<'a>,
    current: &'a JobStatus,
) -> Classified<'a> {
    let active: Vec<&Pod> = claimed
        .owned
        .iter()
        .copied()
        .filter(|p| pods::is_active(p))
        .collect();
    let ready = count(active.iter().filter(|p| pods::is_ready(p)).count());
    let terminating = count(
        claimed
            .owned
            .iter()
            .filter(|p| pods::is_terminating(p))
            .count(),
    );
    let stored = current.uncounted_terminated_pods.as_ref();
    let stored_succeeded = stored
        .and_then(|u| u.succeeded.as_deref())
        .unwrap_or_default();
    let stored_failed = stored.and_then(|u| u.failed.as_deref()).unwrap_or_default();
    let stored_succeeded_set: HashSet<&str> = stored_succeeded.iter().map(String::as_str).collect();
    let stored_failed_set: HashSet<&str> = stored_failed.iter().map(String::as_str).collect();
    let new_succeeded: Vec<&Pod> = claimed
        .owned
        .iter()
        .copied()
        .filter(|p| {
            claimed.tracked(p)
                && pods::is_succeeded(p)
                && spec.countable(p)
                && !stored_succeeded_set.contains(uid(p))
        })
        .collect();
    let new_failed: Vec<&Pod> = claimed
        .owned
        .iter()
        .copied()
        .filter(|p| {
            claimed.tracked(p)
                && spec.is_failed(p)
                && spec.countable(p)
                && !stored_failed_set.contains(uid(p))
                // Listed as succeeded already (by another writer): recorded, not new.
                && !stored_succeeded_set.contains(uid(p))
        })
        .collect();
    let new_failed_counted = count(
        new_failed
            .iter()
            .filter(|p| failure_policy::match_pod(spec.pod_failure_policy, p).counts)
            .count(),
    );
    let indexes = Indexes::of(spec, &claimed, &active, current);
    // The counters come from the status, which anyone with access to it may have set to
    // int32's limit: they saturate there rather than wrap or panic.
    let succeeded = if spec.indexed {
        indexes.completed.total()
    } else {
        current
            .succeeded
            .unwrap_or(0)
            .saturating_add(count(new_succeeded.len()))
            .saturating_add(count(stored_succeeded.len()))
    };
    let failed = current
        .failed
        .unwrap_or(0)
        .saturating_add(new_failed_counted)
        .saturating_add(count(stored_failed.len()));
    Classified {
        claimed,
        active,
        ready,
        terminating,
        counted_succeeded: current.succeeded.unwrap_or(0),
        counted_failed: current.failed.unwrap_or(0),
        stored_succeeded,
        stored_failed,
        stored_succeeded_set,
        stored_failed_set,
        new_succeeded,
        new_failed,
        succeeded,
        failed,
        indexes,
    }
}

/// A number of pods as the status counts them (int32), saturating.
pub fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {

    use crate::plan::testing::*;

    #[test]
    fn ready_count_follows_pod_conditions() {
        let j = running(job(Some(3), 2), 2);
        let p = run(&j, &[pod("a", "Running").ready(), pod("b", "Running")]);
        assert_eq!(p.status.unwrap().ready, Some(1));
    }

    #[test]
    fn deleted_pod_counts_as_failed_unless_replacement_policy_failed() {
        for (policy, failed) in [
            (None, true),
            (Some("TerminatingOrFailed"), true),
            (Some("Failed"), false),
        ] {
            let mut j = running(job(Some(2), 1), 0);
            spec(&mut j).pod_replacement_policy = policy.map(String::from);
            let p = run(&j, &[pod("a", "Running").deleting()]);
            let s = status_after(&j, &p);
            assert_eq!(!uncounted(&s).1.is_empty(), failed, "{policy:?}");
            assert_eq!(s.terminating, Some(1));
            // Failed: the terminating pod blocks its replacement.
            assert_eq!(p.create.is_empty(), policy == Some("Failed"), "{policy:?}");
        }
    }

    #[test]
    fn counters_at_the_int32_limit_saturate() {
        use k8s_openapi::api::batch::v1::UncountedTerminatedPods;
        let mut j = running(job(None, 3), 1);
        st(&mut j).succeeded = Some(i32::MAX);
        st(&mut j).failed = Some(i32::MAX);
        st(&mut j).uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(vec!["gone-s-uid".into()]),
            failed: Some(vec!["gone-f-uid".into()]),
        });
        let mut limitless = j.clone();
        spec(&mut limitless).backoff_limit = Some(i32::MAX);
        for j in [j, limitless] {
            let p = run(&j, &[pod("a", "Succeeded"), pod("b", "Failed")]);
            let s = p.status.unwrap();
            assert_eq!((s.succeeded, s.failed), (Some(i32::MAX), Some(i32::MAX)));
        }
    }
}
