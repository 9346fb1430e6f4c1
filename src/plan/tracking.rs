//! Finalizer tracking: finished pods are recorded in `uncountedTerminatedPods` (Indexed
//! successes in `completedIndexes`) and lose the tracking finalizer; recorded pods whose
//! finalizer is gone move into `succeeded`/`failed`. A finished Job's pods only lose it.

use std::collections::HashSet;

use k8s_openapi::api::batch::v1::JobCondition;
use k8s_openapi::api::core::v1::Pod;

use super::claim::Claimed;
use super::classify::Classified;
use super::indexed::Intervals;
use super::manage::Managed;
use super::pods::{self, pod_ref, uid};
use super::spec::Spec;
use super::status::SUCCESS_CRITERIA_MET;
use super::{
    BackoffRecord, MAX_UNCOUNTED_PODS, Plan, PlanOutcome, PodRef, Snapshot, TRACKING_FINALIZER,
    failure_policy,
};

/// A finished Job is not synced again; its pods only lose the tracking finalizer
/// (upstream's orphan cleanup), and the backoff record is dropped.
pub fn release_finished_job(snapshot: &Snapshot<'_>, done: &JobCondition, plan: &mut Plan) {
    plan.backoff = BackoffRecord::default();
    let mut refs: Vec<PodRef> = snapshot
        .pods
        .iter()
        .filter(|p| {
            pods::has_finalizer(p, TRACKING_FINALIZER)
                && !snapshot.finalizer_removed.contains(uid(p))
        })
        .map(|p| pod_ref(p))
        .collect();
    refs.sort();
    refs.dedup();
    if !refs.is_empty() {
        plan.decisions.push(format!(
            "removing the tracking finalizer from {} pods of the finished Job",
            refs.len()
        ));
    }
    plan.remove_finalizers = refs;
    plan.outcome.rule = format!(
        "the Job is finished ({}: {})",
        done.type_,
        done.reason.as_deref().unwrap_or("")
    );
}

/// The counters and index lists after this sync.
pub struct Tracked {
    pub succeeded: i32,
    pub failed: i32,
    pub uncounted_succeeded: Vec<String>,
    pub uncounted_failed: Vec<String>,
    /// Indexed Jobs: `completedIndexes` with this sync's successes.
    pub completed_indexes: Option<Intervals>,
    new_completed_indexes: Vec<i32>,
    /// backoffLimitPerIndex: `failedIndexes` with this sync's failed indexes.
    pub failed_indexes: Option<Intervals>,
    /// The uncounted lists are full; the rest waits for the next sync.
    pub reached_max_uncounted: bool,
}

/// Records the pods that finished and lists the finalizers to remove in `plan`.
pub fn track(
    spec: &Spec<'_>,
    pods: &Classified<'_>,
    managed: &Managed<'_>,
    verdict: Option<&JobCondition>,
    plan: &mut Plan,
) -> Tracked {
    let claimed = &pods.claimed;
    let with_finalizer: HashSet<&str> = claimed
        .owned
        .iter()
        .filter(|p| claimed.tracked(p))
        .map(|p| uid(p))
        .collect();
    let (uncounted_succeeded, gone_succeeded) =
        still_listed(pods.stored_succeeded, &with_finalizer);
    let (uncounted_failed, gone_failed) = still_listed(pods.stored_failed, &with_finalizer);
    let mut tracked = Tracked {
        succeeded: pods.counted_succeeded.saturating_add(gone_succeeded),
        failed: pods.counted_failed.saturating_add(gone_failed),
        uncounted_succeeded,
        uncounted_failed,
        completed_indexes: None,
        new_completed_indexes: Vec::new(),
        failed_indexes: pods.indexes.failed.clone(),
        reached_max_uncounted: false,
    };
    // Once the Job fails, every pod it still has counts as failed.
    let failing = verdict.is_some_and(|c| c.type_ != SUCCESS_CRITERIA_MET);
    let mut remove: Vec<PodRef> = Vec::new();
    let deleted: HashSet<&str> = managed.deleted.iter().map(|p| uid(p)).collect();
    for p in tracking_order(spec, claimed) {
        if deleted.contains(uid(p)) || !finalizer_goes(spec, pods, verdict.is_some(), p) {
            continue;
        }
        remove.push(pod_ref(p));
        tracked.record(spec, pods, failing, p, &mut plan.outcome);
        if tracked.new_completed_indexes.len()
            + tracked.uncounted_succeeded.len()
            + tracked.uncounted_failed.len()
            >= MAX_UNCOUNTED_PODS
        {
            tracked.reached_max_uncounted = true;
            break;
        }
    }
    if spec.indexed {
        let completed = pods
            .indexes
            .completed
            .with_indexes(&tracked.new_completed_indexes);
        tracked.succeeded = completed.total();
        tracked.completed_indexes = Some(completed);
    }
    remove.sort();
    remove.dedup();
    // Not a decision of its own: the executor logs how many finalizers it removed.
    plan.remove_finalizers = remove;
    tracked
}

/// Listed pods that still hold the finalizer stay listed; the others are counted now.
fn still_listed(listed: &[String], with_finalizer: &HashSet<&str>) -> (Vec<String>, i32) {
    let mut still = Vec::new();
    let mut gone = 0;
    for u in listed {
        if with_finalizer.contains(u.as_str()) {
            still.push(u.clone());
        } else {
            gone += 1;
        }
    }
    (still, gone)
}

/// Pods holding the tracking finalizer, Indexed ones by index (pods without one first).
fn tracking_order<'a>(spec: &Spec<'_>, claimed: &Claimed<'a>) -> Vec<&'a Pod> {
    // Only tracked pods are counted here (most pods of a big Job are long untracked).
    let mut order: Vec<&Pod> = claimed
        .owned
        .iter()
        .copied()
        .filter(|p| claimed.tracked(p))
        .collect();
    if spec.indexed {
        order.sort_by_cached_key(|p| pods::completion_index(p).map_or(-1, i64::from));
    }
    order
}

/// Whether the pod's tracking finalizer goes in this plan: every pod's once the Job is
/// deleted or heading to its end, otherwise a finished pod's, except a failed pod whose
/// index still waits for its replacement.
fn finalizer_goes(spec: &Spec<'_>, pods: &Classified<'_>, finishing: bool, p: &Pod) -> bool {
    spec.deleting
        || finishing
        || pods::is_succeeded(p)
        || (spec.is_failed(p)
            && spec.valid_index(p).is_none_or(|ix| {
                pods.indexes
                    .last_failed
                    .get(&ix)
                    .is_none_or(|last| uid(last) != uid(p))
            }))
}

impl Tracked {
    /// Records a pod whose finalizer goes in this plan, if it is to be counted.
    fn record(
        &mut self,
        spec: &Spec<'_>,
        pods: &Classified<'_>,
        failing: bool,
        p: &Pod,
        outcome: &mut PlanOutcome,
    ) {
        let finished = |outcome: &mut PlanOutcome, result: &str| {
            *outcome.pods_finished.entry(result.to_string()).or_default() += 1;
        };
        if pods::is_succeeded(p) && !pods.stored_as_failed(p) {
            if spec.indexed {
                // Not an index that failed before (`completed` leaves those out).
                if let Some(ix) = spec.valid_index(p)
                    && !pods.indexes.previously_completed.has(ix)
                    && pods.indexes.completed.has(ix)
                {
                    self.new_completed_indexes.push(ix);
                    finished(outcome, "succeeded");
                }
            } else if !pods.stored_as_succeeded(p) {
                self.uncounted_succeeded.push(uid(p).to_string());
                finished(outcome, "succeeded");
            }
        } else if (spec.is_failed(p) || failing)
            && !pods.stored_as_failed(p)
            && !pods.stored_as_succeeded(p)
            && spec.countable(p)
        {
            let matched = failure_policy::match_pod(spec.pod_failure_policy, p);
            if let Some(action) = matched.action {
                *outcome
                    .failure_policy_actions
                    .entry(action.as_str().to_string())
                    .or_default() += 1;
            }
            if matched.counts {
                self.uncounted_failed.push(uid(p).to_string());
                finished(outcome, "failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use k8s_openapi::api::batch::v1::UncountedTerminatedPods;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::plan::status::*;
    use crate::plan::testing::*;
    use crate::plan::*;

    #[test]
    fn succeeded_pod_goes_to_uncounted_then_to_succeeded() {
        let j = running(job(Some(2), 2), 2);
        let pods = [pod("a", "Succeeded"), pod("b", "Running")];
        let p = run(&j, &pods);
        let s = p.status.clone().unwrap();
        assert_eq!(uncounted(&s).0, vec!["a-uid"]);
        assert_eq!(s.succeeded, None);
        assert_eq!(names(&p.remove_finalizers), vec!["a"]);
        assert_eq!(p.outcome.pods_finished.get("succeeded"), Some(&1));
        assert!(
            p.create.is_empty(),
            "one completion left and one pod running"
        );
        // Next plan: the finalizer is gone.
        let mut j2 = j.clone();
        j2.status = Some(s);
        let p2 = run(
            &j2,
            &[pod("a", "Succeeded").no_finalizer(), pod("b", "Running")],
        );
        let s2 = p2.status.unwrap();
        assert_eq!(s2.succeeded, Some(1));
        assert!(uncounted(&s2).0.is_empty());
        assert!(p2.remove_finalizers.is_empty());
    }

    #[test]
    fn uncounted_pod_that_is_gone_is_counted() {
        let mut j = running(job(Some(3), 1), 0);
        st(&mut j).uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(vec!["gone-uid".into()]),
            failed: Some(vec!["gone2-uid".into()]),
        });
        let p = run(&j, &[]);
        let s = p.status.unwrap();
        assert_eq!((s.succeeded, s.failed), (Some(1), Some(1)));
        assert_eq!(uncounted(&s), (vec![], vec![]));
    }

    #[test]
    fn finalizer_removed_set_counts_as_no_finalizer() {
        let mut j = running(job(Some(3), 1), 1);
        st(&mut j).uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(vec!["a-uid".into()]),
            failed: None,
        });
        let removed: HashSet<String> = ["a-uid".to_string()].into();
        let p = plan_with(
            &j,
            &[pod("a", "Succeeded"), pod("b", "Running")],
            &[],
            &removed,
            &BackoffRecord::default(),
        );
        let s = p.status.unwrap();
        assert_eq!(s.succeeded, Some(1));
        assert!(p.remove_finalizers.is_empty());
    }

    #[test]
    fn uncounted_pod_still_holding_finalizer_is_not_added_twice() {
        let mut j = running(job(Some(3), 1), 1);
        st(&mut j).uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(vec!["a-uid".into()]),
            failed: None,
        });
        let p = run(&j, &[pod("a", "Succeeded"), pod("b", "Running")]);
        assert!(p.status.is_none(), "{:#?}", p.status);
        assert_eq!(names(&p.remove_finalizers), vec!["a"]);
    }

    #[test]
    fn uncounted_list_is_capped_at_500() {
        let j = running(job(Some(2000), 1), 0);
        let pods: Vec<P> = (0..700)
            .map(|i| pod(&format!("p{i:04}"), "Succeeded"))
            .collect();
        let p = run(&j, &pods);
        let s = p.status.unwrap();
        assert_eq!(uncounted(&s).0.len(), 500);
        assert_eq!(p.remove_finalizers.len(), 500);
    }

    #[test]
    fn indexed_succeeded_pod_goes_to_completed_indexes() {
        let j = running(indexed_job(4, 2), 2);
        let pods = [
            pod("a", "Succeeded").index(1),
            pod("b", "Running").index(0),
            pod("c", "Succeeded").index(3),
        ];
        let p = run(&j, &pods);
        let s = p.status.clone().unwrap();
        assert_eq!(s.completed_indexes.as_deref(), Some("1,3"));
        assert_eq!(s.succeeded, Some(2));
        assert!(uncounted(&s).0.is_empty());
        let mut rm = names(&p.remove_finalizers);
        rm.sort();
        assert_eq!(rm, vec!["a", "c"]);
    }

    #[test]
    fn indexed_pod_out_of_range_is_not_counted() {
        let j = running(indexed_job(2, 2), 0);
        let pods = [pod("a", "Succeeded").index(5), pod("b", "Failed").index(7)];
        let p = run(&j, &pods);
        let s = status_after(&j, &p);
        assert_eq!(s.completed_indexes, None);
        assert!(uncounted(&s).1.is_empty());
        assert_eq!(p.remove_finalizers.len(), 2);
    }

    #[test]
    fn finished_job_only_strips_finalizers() {
        let mut j = running(job(Some(1), 1), 0);
        st(&mut j).conditions = Some(vec![
            cond(SUCCESS_CRITERIA_MET, "a", "b"),
            cond(COMPLETE, "a", "b"),
        ]);
        st(&mut j).completion_time = Some(Time(t(0)));
        let b = BackoffRecord {
            failures_after_last_success: 2,
            last_failure_time: Some(t(1)),
            ..BackoffRecord::default()
        };
        let p = plan_with(
            &j,
            &[pod("a", "Running"), pod("b", "Failed").no_finalizer()],
            &[],
            &HashSet::new(),
            &b,
        );
        assert_eq!(names(&p.remove_finalizers), vec!["a"]);
        assert!(p.status.is_none() && p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.backoff, BackoffRecord::default());
    }

    #[test]
    fn deleted_job_counts_finished_pods_and_strips_all_finalizers() {
        let mut j = running(job(Some(3), 2), 2);
        j.metadata.deletion_timestamp = Some(Time(t(999)));
        let p = run(&j, &[pod("a", "Running"), pod("b", "Succeeded")]);
        assert!(p.create.is_empty() && p.delete.is_empty());
        let mut rm = names(&p.remove_finalizers);
        rm.sort();
        assert_eq!(rm, vec!["a", "b"]);
        assert_eq!(uncounted(&p.status.unwrap()).0, vec!["b-uid"]);
    }

    #[test]
    fn a_pod_listed_as_succeeded_is_not_listed_again_as_failed() {
        // Another writer's status lists a failed pod as succeeded: it stays where it is
        // (a uid in both lists is rejected).
        let mut j = running(job(Some(3), 1), 0);
        st(&mut j).uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(vec!["a-uid".into()]),
            failed: None,
        });
        let p = run(&j, &[pod("a", "Failed")]);
        assert_eq!(
            uncounted(&status_after(&j, &p)),
            (vec!["a-uid".into()], vec![])
        );
        assert_eq!(p.backoff.failures_after_last_success, 0);
    }
}
