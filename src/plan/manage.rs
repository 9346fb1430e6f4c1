//! Managing pods (upstream's manageJob): once the Job has a verdict its remaining pods go;
//! otherwise a suspended Job loses all of them, and a running one loses what is too many
//! or gets what is missing, within the pod failure backoff.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::JobCondition;
use k8s_openapi::api::core::v1::Pod;

use super::classify::{Classified, count};
use super::indexed::{self, Intervals};
use super::pods::{self, pod_ref};
use super::spec::Spec;
use super::status::SUCCESS_CRITERIA_MET;
use super::template::IndexFailureCounts;
use super::{MAX_POD_CREATE_DELETE_PER_SYNC, NewPod, Plan, backoff, failure_policy, plural};

/// The pod counts once this plan's creates and deletes are done.
pub struct Managed<'a> {
    pub deleted: Vec<&'a Pod>,
    pub active: i32,
    pub ready: i32,
    pub terminating: i32,
}

pub fn manage_pods<'a>(
    spec: &Spec<'_>,
    pods: &Classified<'a>,
    target: Option<&JobCondition>,
    plan: &mut Plan,
) -> Managed<'a> {
    let mut created = 0;
    let deleted = match target {
        Some(target) => remove_remaining(spec, pods, target),
        None if spec.deleting => Vec::new(),
        None if spec.suspended => {
            let mut deleted = removal_candidates(spec, &pods.active, pods.active.len());
            deleted.truncate(MAX_POD_CREATE_DELETE_PER_SYNC);
            deleted
        }
        None => {
            let (deleted, n) = scale(spec, pods, plan);
            created = n;
            deleted
        }
    };
    if target.is_none() && !deleted.is_empty() {
        plan.decisions.push(format!(
            "deleting {} active pods ({})",
            deleted.len(),
            if spec.suspended {
                "Job suspended"
            } else {
                "more than wanted"
            }
        ));
    }
    let deleted_ready = count(deleted.iter().filter(|p| pods::is_ready(p)).count());
    plan.delete = deleted.iter().map(|p| pod_ref(p)).collect();
    let active = count(pods.active.len()).saturating_add(count(created));
    Managed {
        active: active.saturating_sub(count(deleted.len())),
        ready: pods.ready.saturating_sub(deleted_ready),
        terminating: pods.terminating.saturating_add(count(deleted.len())),
        deleted,
    }
}

/// Removes the remaining active pods of a Job with a verdict. When the Job fails they count
/// as failed, so a pod still holding the finalizer is first recorded in
/// uncountedTerminatedPods and deleted by the next plan: deleting it now would strip the
/// finalizer before the status that counts it is written.
fn remove_remaining<'a>(
    spec: &Spec<'_>,
    pods: &Classified<'a>,
    target: &JobCondition,
) -> Vec<&'a Pod> {
    let failing = target.type_ != SUCCESS_CRITERIA_MET;
    let mut candidates = pods.active.clone();
    candidates.sort_by(|a, b| pods::least_advanced_first(a, b));
    let mut deleted = Vec::new();
    for p in candidates {
        let held_back = failing
            && pods.claimed.tracked(p)
            && !pods.stored_as_failed(p)
            && !pods.stored_as_succeeded(p)
            && spec.countable(p)
            && failure_policy::match_pod(spec.pod_failure_policy, p).counts;
        if !held_back && deleted.len() < MAX_POD_CREATE_DELETE_PER_SYNC {
            deleted.push(p);
        }
    }
    deleted
}

/// Deletes what is more than wanted, or else creates what is missing; returns the pods to
/// delete and how many were created.
fn scale<'a>(spec: &Spec<'_>, pods: &Classified<'a>, plan: &mut Plan) -> (Vec<&'a Pod>, usize) {
    let active = count(pods.active.len());
    let want_active = match spec.completions {
        None if pods.succeeded > 0 => active,
        None => spec.parallelism,
        Some(c) => c.saturating_sub(pods.succeeded).clamp(0, spec.parallelism),
    };
    let rm_at_least = usize::try_from(active.saturating_sub(want_active)).unwrap_or(0);
    let mut deleted = removal_candidates(spec, &pods.active, rm_at_least);
    deleted.truncate(MAX_POD_CREATE_DELETE_PER_SYNC);
    if !deleted.is_empty() {
        return (deleted, 0);
    }
    let held = if spec.only_replace_failed {
        pods.terminating
    } else {
        0
    };
    let missing = want_active.saturating_sub(held).saturating_sub(active);
    let Ok(missing @ 1..) = usize::try_from(missing) else {
        return (deleted, 0);
    };
    let created = create_pods(spec, pods, missing, plan);
    (deleted, created)
}

/// Active pods to delete, least advanced first: for Indexed Jobs every pod without a
/// valid index and all but the most advanced pod of a repeated index, then as many more
/// as needed to reach `at_least`.
fn removal_candidates<'a>(spec: &Spec<'_>, active: &[&'a Pod], at_least: usize) -> Vec<&'a Pod> {
    let mut rm: Vec<&Pod> = Vec::new();
    let mut left: Vec<&Pod> = Vec::new();
    if spec.indexed {
        let mut by_index: BTreeMap<i32, Vec<&Pod>> = BTreeMap::new();
        let mut invalid: Vec<&Pod> = Vec::new();
        for &p in active {
            match spec.valid_index(p) {
                Some(ix) => by_index.entry(ix).or_default().push(p),
                None => invalid.push(p),
            }
        }
        invalid.sort_by(|a, b| pods::least_advanced_first(a, b));
        rm.extend(invalid);
        for (_, mut same) in by_index {
            same.sort_by(|a, b| pods::least_advanced_first(a, b));
            let keep = same.pop();
            rm.extend(same);
            left.extend(keep);
        }
    } else {
        left = active.to_vec();
    }
    if rm.len() < at_least {
        left.sort_by(|a, b| pods::least_advanced_first(a, b));
        let more = (at_least - rm.len()).min(left.len());
        rm.extend(left.into_iter().take(more));
    }
    rm
}

/// Adds up to `wanted` pods to `plan.create` unless the pod failure backoff says wait.
/// Returns how many were planned.
fn create_pods(spec: &Spec<'_>, pods: &Classified<'_>, wanted: usize, plan: &mut Plan) -> usize {
    debug_assert!(!spec.suspended);
    let per_index = spec.backoff_limit_per_index.is_some();
    if !per_index && backoff::holds_back(plan, wanted, spec.now) {
        return 0;
    }
    let wanted = wanted.min(MAX_POD_CREATE_DELETE_PER_SYNC);
    if !spec.indexed {
        plan.create.extend((0..wanted).map(|_| NewPod::default()));
        plan.decisions
            .push(format!("creating {}", plural(wanted, "pod")));
        return wanted;
    }
    let not_pending = indexes_not_pending(spec, pods);
    let mut indexes = indexed::first_pending(&not_pending, wanted, spec.index_count);
    if per_index {
        let last_failed = &pods.indexes.last_failed;
        indexes = backoff::indexes_past_backoff(last_failed, indexes, spec.now, plan);
    }
    for &ix in &indexes {
        let counts = per_index.then(|| {
            let replaced = pods.indexes.last_failed.get(&ix).copied();
            IndexFailureCounts::after(spec.pod_failure_policy, replaced)
        });
        plan.create.push(NewPod {
            index: Some(ix),
            failure_counts: counts,
        });
    }
    if !indexes.is_empty() {
        plan.decisions.push(format!(
            "creating {} for indexes {}",
            plural(indexes.len(), "pod"),
            Intervals::from_indexes(&indexes)
        ));
    }
    indexes.len()
}

/// Indexes that need no new pod: completed, failed, running, and (when only failed pods
/// are replaced) terminating.
fn indexes_not_pending(spec: &Spec<'_>, pods: &Classified<'_>) -> Intervals {
    let mut taken: Vec<i32> = pods
        .active
        .iter()
        .filter_map(|p| pods::completion_index(p))
        .collect();
    if spec.only_replace_failed {
        taken.extend(
            pods.claimed
                .owned
                .iter()
                .filter(|p| pods::is_terminating(p))
                .filter_map(|p| pods::completion_index(p)),
        );
    }
    taken.sort_unstable();
    let not_pending = pods.indexes.completed.with_indexes(&taken);
    match &pods.indexes.failed {
        Some(failed) => not_pending.merge(failed),
        None => not_pending,
    }
}

#[cfg(test)]
mod tests {

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::plan::status::*;
    use crate::plan::testing::*;
    use crate::plan::*;

    #[test]
    fn new_job_creates_parallelism_pods_and_sets_start_time() {
        for (completions, parallelism, want) in [
            (Some(5), 2, 2),
            (Some(1), 3, 1),
            (None, 3, 3),
            (Some(0), 2, 0),
            (Some(4), 0, 0),
        ] {
            let j = job(completions, parallelism);
            let p = run(&j, &[]);
            assert_eq!(p.create.len(), want, "{completions:?}/{parallelism}");
            let s = status_after(&j, &p);
            assert_eq!(s.start_time, Some(Time(now())));
            assert_eq!(s.active.unwrap_or(0), want as i32);
            assert_eq!(s.ready, Some(0));
            assert_eq!(s.terminating, Some(0));
        }
    }

    #[test]
    fn indexed_job_recreates_lowest_missing_index() {
        let j = running(indexed_job(5, 3), 2);
        let pods = [pod("a", "Running").index(0), pod("b", "Running").index(3)];
        let p = run(&j, &pods);
        let idx: Vec<String> = built(&j, &p)
            .iter()
            .map(|c| c.metadata.annotations.as_ref().unwrap()[pods::COMPLETION_INDEX].clone())
            .collect();
        assert_eq!(idx, vec!["1"]);
    }

    #[test]
    fn indexed_job_skips_completed_indexes() {
        let mut j = running(indexed_job(5, 5), 0);
        st(&mut j).completed_indexes = Some("0,2".into());
        st(&mut j).succeeded = Some(2);
        let p = run(&j, &[]);
        let idx: Vec<String> = built(&j, &p)
            .iter()
            .map(|c| c.metadata.annotations.as_ref().unwrap()[pods::COMPLETION_INDEX].clone())
            .collect();
        assert_eq!(idx, vec!["1", "3", "4"]);
    }

    #[test]
    fn creates_are_capped_at_500() {
        let j = job(Some(2000), 1000);
        let p = run(&j, &[]);
        assert_eq!(p.create.len(), 500);
        assert_eq!(p.status.unwrap().active, Some(500));
    }

    #[test]
    fn scale_down_deletes_least_advanced_pods_first() {
        let cases: Vec<(&str, Vec<P>, Vec<&str>)> = vec![
            (
                "unscheduled before scheduled",
                vec![pod("s", "Pending").node(), pod("u", "Pending")],
                vec!["u"],
            ),
            (
                "pending before running",
                vec![pod("r", "Running").node(), pod("p", "Pending").node()],
                vec!["p"],
            ),
            (
                "not ready before ready",
                vec![
                    pod("rd", "Running").node().ready(),
                    pod("nr", "Running").node(),
                ],
                vec!["nr"],
            ),
            (
                "newer before older",
                vec![
                    pod("old", "Running").node().created(1),
                    pod("new", "Running").node().created(5),
                ],
                vec!["new"],
            ),
            (
                "more restarts first",
                vec![
                    pod("calm", "Running").node().restarts(0),
                    pod("crashy", "Running").node().restarts(3),
                ],
                vec!["crashy"],
            ),
            (
                "ready for less time first",
                vec![
                    pod("long", "Running").node().cond("Ready", "True", t(1)),
                    pod("short", "Running").node().cond("Ready", "True", t(50)),
                ],
                vec!["short"],
            ),
        ];
        for (name, pods, want) in cases {
            let j = running(job(Some(10), 1), 2);
            let p = run(&j, &pods);
            assert_eq!(names(&p.delete), want, "{name}");
            assert!(p.create.is_empty(), "{name}");
            let s = p.status.unwrap();
            assert_eq!((s.active, s.terminating), (Some(1), Some(1)), "{name}");
        }
    }

    #[test]
    fn parallelism_zero_deletes_every_active_pod() {
        let j = running(job(Some(3), 0), 2);
        let p = run(&j, &[pod("a", "Running").ready(), pod("b", "Running")]);
        assert_eq!(p.delete.len(), 2);
        let s = p.status.unwrap();
        assert_eq!((s.active, s.ready, s.terminating), (None, Some(0), Some(2)));
        assert!(p.remove_finalizers.is_empty());
    }

    #[test]
    fn indexed_job_deletes_duplicate_invalid_and_out_of_range_pods() {
        let j = running(indexed_job(3, 3), 5);
        let pods = [
            pod("a0", "Running").index(0).node().ready(),
            pod("b0", "Pending").index(0),
            pod("c1", "Running").index(1),
            pod("d9", "Running").index(9),
            pod("none", "Running"),
            pod("bad", "Running").annotation(pods::COMPLETION_INDEX, "x"),
        ];
        let p = run(&j, &pods);
        let mut got = names(&p.delete);
        got.sort();
        assert_eq!(got, vec!["b0", "bad", "d9", "none"]);
        assert!(p.create.is_empty(), "deletes win over creates");
    }

    #[test]
    fn deletes_win_over_creates_in_one_sync() {
        let j = running(indexed_job(2, 2), 2);
        let p = run(
            &j,
            &[pod("a", "Running").index(0), pod("b", "Running").index(0)],
        );
        assert_eq!(p.delete.len(), 1);
        assert!(p.create.is_empty());
    }

    #[test]
    fn success_criteria_met_deletes_remaining_pods_before_complete() {
        let mut j = running(job(Some(1), 2), 1);
        st(&mut j).succeeded = Some(1);
        st(&mut j).conditions = Some(vec![cond(
            SUCCESS_CRITERIA_MET,
            REASON_COMPLETIONS_REACHED,
            MESSAGE_COMPLETIONS_REACHED,
        )]);
        let p = run(&j, &[pod("b", "Running")]);
        assert_eq!(names(&p.delete), vec!["b"]);
        let s = p.status.unwrap();
        assert!(!has_cond(&s, COMPLETE));
        assert_eq!((s.active, s.terminating), (None, Some(1)));
    }

    #[test]
    fn failure_target_job_deletes_counted_pods_then_fails() {
        let mut sim = Sim::new(job(Some(5), 2));
        spec(&mut sim.job).backoff_limit = Some(0);
        sim.apply(&sim.plan(), 4);
        sim.set_phase(0, "Failed");
        let plans = sim.settle();
        let s = sim.status();
        assert!(has_cond(&s, FAILED), "{s:#?}");
        assert_eq!(s.failed, Some(2));
        assert_eq!((s.active, s.terminating), (None, Some(0)));
        assert!(sim.pods.iter().all(|p| p.metadata.finalizers.is_none()));
        let last = plans.iter().find(|p| p.outcome.finished.is_some()).unwrap();
        assert_eq!(
            last.events[0],
            JobEvent {
                type_: EventType::Warning,
                reason: REASON_BACKOFF_LIMIT.into(),
                message: MESSAGE_BACKOFF_LIMIT.into()
            }
        );
    }
}
