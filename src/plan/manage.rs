//! Managing pods (upstream's manageJob): once the Job has a verdict its remaining pods go;
//! otherwise a suspended Job loses all of them, and a running one loses what is too many
//! or gets what is missing, within the pod failure backoff.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::JobCondition;
use k8s_openapi::api::core::v1::Pod;

use super::classify::Classified;
use super::indexed::{self, Intervals};
use super::pods::{self, pod_ref};
use super::spec::Spec;
use super::status::SUCCESS_CRITERIA_MET;
use super::template::{self, IndexFailureCounts};
use super::{MAX_POD_CREATE_DELETE_PER_SYNC, Plan, backoff, failure_policy, plural};

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
    let deleted_ready = deleted.iter().filter(|p| pods::is_ready(p)).count() as i32;
    plan.delete = deleted.iter().map(|p| pod_ref(p)).collect();
    Managed {
        active: pods.active.len() as i32 + created as i32 - deleted.len() as i32,
        ready: pods.ready - deleted_ready,
        terminating: pods.terminating + deleted.len() as i32,
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
    let active = pods.active.len() as i32;
    let want_active = match spec.completions {
        None if pods.succeeded > 0 => active,
        None => spec.parallelism,
        Some(c) => (c - pods.succeeded).clamp(0, spec.parallelism),
    };
    let rm_at_least = (active - want_active).max(0) as usize;
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
    let missing = want_active - held - active;
    if missing <= 0 {
        return (deleted, 0);
    }
    let created = create_pods(spec, pods, missing as usize, plan);
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
        plan.create
            .extend((0..wanted).map(|_| template::build_pod(spec.job, None, None)));
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
        plan.create
            .push(template::build_pod(spec.job, Some(ix), counts));
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
