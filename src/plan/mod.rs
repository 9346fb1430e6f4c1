//! The planner: a pure function from what the controller sees (a [`Snapshot`]) to what it
//! should do next (a [`Plan`]). Nothing in this module talks to a cluster, so every Job rule
//! is exercised by table-driven unit tests in milliseconds.
//!
//! The executor applies a plan in a fixed order and then plans again on the state it
//! produced, so a plan only needs to describe the next step, never the whole road:
//!
//! 1. delete `delete` (tracking finalizer first, then the pod),
//! 2. create `create`,
//! 3. if every write so far succeeded, write `status` with `replace_status`,
//! 4. if that succeeded, remove the tracking finalizer from `remove_finalizers`,
//! 5. plan again (the next plan moves the now finalizer-free pods from the uncounted lists
//!    into `succeeded`/`failed`).
//!
//! A failed step aborts the rest; the executor re-reads and re-plans, so a plan must be
//! correct to apply partially in that order.
//!
//! One sync ([`plan`]) runs these stages, each in its own file: `spec` (defaults applied)
//! → `claim` (adopt, release) → `classify` (pods by state; `indexed` for completed and
//! failed indexes) → `verdict` (is the Job done?) → `manage` (delete, create; with
//! `backoff` and `template`) → `suspend` → `tracking` (uncountedTerminatedPods, finalizers)
//! → `conditions` (the terminal ones) → `status` → `rule` (the sentence for `explain`).
//! `pods`, `failure_policy` and `success_policy` answer questions about one pod or policy.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

pub mod backoff;
mod claim;
mod classify;
mod conditions;
pub mod failure_policy;
pub mod indexed;
mod manage;
pub mod pods;
#[cfg(test)]
mod properties;
mod rule;
mod spec;
pub mod status;
pub mod success_policy;
mod suspend;
pub mod template;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
mod tracking;
mod verdict;

use spec::Spec;
use status::Draft;

/// The finalizer that keeps a finished pod around until the Job status counts it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Put on an excess pod by the same patch that removes its tracking finalizer, just before
/// the pod is deleted: a pod that still has it, no finalizer and no deletion, finished
/// between the two writes (or the controller died between them). See
/// [`claim::restore_released`].
pub const RELEASED_ANNOTATION: &str = "jobkeeper.dev/released-for-deletion";
/// At most this many pod UIDs wait in `uncountedTerminatedPods` (keeps the status small).
pub const MAX_UNCOUNTED_PODS: usize = 500;
/// At most this many pod creates or deletes per plan.
pub const MAX_POD_CREATE_DELETE_PER_SYNC: usize = 500;

/// Everything the planner may look at. Built by the runtime from its caches.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub job: &'a Job,
    /// Pods whose controller ownerReference is this Job (by UID), including pods the
    /// controller created that the cache has not shown yet.
    pub pods: Vec<&'a Pod>,
    /// Orphan pods in the Job's namespace that match its selector (adoption candidates).
    pub orphans: Vec<&'a Pod>,
    /// Pods (by UID) whose tracking finalizer the controller already removed, though the
    /// cache may still show it. The planner treats them as finalizer-free.
    pub finalizer_removed: &'a HashSet<String>,
    /// Pod failure backoff carried between syncs (in memory, as upstream does).
    pub backoff: &'a BackoffRecord,
    pub now: Timestamp,
}

/// Failures since the last success, for the exponential pod backoff (10 s · 2^(n−1), at
/// most 10 min). Keyed per Job; for backoffLimitPerIndex the counts live in pod annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackoffRecord {
    pub failures_after_last_success: u32,
    pub last_failure_time: Option<Timestamp>,
    /// When the latest counted success finished: a failure seen in a later sync counts only
    /// if it finished after this.
    pub last_success_time: Option<Timestamp>,
}

/// A pod the plan refers to by identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub name: String,
    pub uid: String,
    /// The resourceVersion the plan saw: a write that must act only on the pod as judged
    /// (adoption) makes it a precondition.
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An event to publish on the Job, with upstream's reason strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// A pod the plan asks for: its completion index (Indexed Jobs) and the per-index failure
/// counts it carries (backoffLimitPerIndex). Everything else comes from the Job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewPod {
    pub index: Option<i32>,
    pub failure_counts: Option<template::IndexFailureCounts>,
}

impl NewPod {
    /// The pod object to send: the Job's template with owner, finalizer and index.
    pub fn build(&self, job: &Job) -> Pod {
        template::build_pod(job, self.index, self.failure_counts)
    }
}

/// What to do next for one Job.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Pods to delete, least-advanced first. The executor removes their tracking finalizer
    /// before deleting them; they are not counted as failed.
    pub delete: Vec<PodRef>,
    /// Pods to create, built from the Job's template only as each is created
    /// ([`NewPod::build`]): a plan of 500 creates holds 500 of these small records, not 500
    /// copies of a template that may be hundreds of kilobytes.
    pub create: Vec<NewPod>,
    /// Orphans to adopt (controller ownerReference + tracking finalizer in one patch).
    pub adopt: Vec<PodRef>,
    /// Owned pods that no longer match the selector, to release (ownerReference removed).
    pub release: Vec<PodRef>,
    /// The new status, only when it differs from the Job's current status. It already
    /// accounts for `create` and `delete` (e.g. `active`), and lists in
    /// `uncountedTerminatedPods` every pod in `remove_finalizers` that is to be counted.
    pub status: Option<JobStatus>,
    /// Pods whose tracking finalizer goes once `status` is written.
    pub remove_finalizers: Vec<PodRef>,
    /// Pods released for deletion that succeeded before the delete: the tracking finalizer
    /// goes back on, and the next plan counts them.
    pub restore: Vec<PodRef>,
    /// The backoff record to keep for the next sync.
    pub backoff: BackoffRecord,
    pub events: Vec<JobEvent>,
    /// When to sync again even without a watch event (backoff expiry, activeDeadline).
    pub requeue_after: Option<Duration>,
    /// One line per decision that changed something, for the log (e.g. "created 2 pods").
    pub decisions: Vec<String>,
    /// Counts the metrics need, derived while planning.
    pub outcome: PlanOutcome,
}

/// Facts about a plan that metrics and `explain` report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOutcome {
    /// Set when this plan's status finishes the Job: (result "succeeded"/"failed", reason).
    pub finished: Option<(String, String)>,
    /// Pods newly put into the uncounted lists, by result.
    pub pods_finished: BTreeMap<String, u32>,
    /// Pod failures matched by a podFailurePolicy rule, by action.
    pub failure_policy_actions: BTreeMap<String, u32>,
    /// A sentence for a person: the rule that decides the Job's state right now.
    pub rule: String,
    /// Set when pods are wanted but the pod failure backoff holds them back: the time left
    /// before the next one may be created.
    pub pod_backoff: Option<Duration>,
}

impl Plan {
    /// True when applying the plan would change nothing in the cluster.
    pub fn is_noop(&self) -> bool {
        self.delete.is_empty()
            && self.create.is_empty()
            && self.adopt.is_empty()
            && self.release.is_empty()
            && self.status.is_none()
            && self.remove_finalizers.is_empty()
            && self.restore.is_empty()
    }
}

/// Plans the next step for one Job. Pure: the same snapshot always gives the same plan.
///
/// Besides the order above, the executor is expected to apply `adopt` before writing
/// `status` (adopted pods are counted as owned, with the tracking finalizer), and to keep
/// `backoff` only once `status` was written (or when `status` is `None`), as the failures
/// it counts are the ones this plan moves into `uncountedTerminatedPods`.
///
/// One sync, in upstream's order: claim the pods, classify them, decide whether the Job is
/// done, manage its pods, track finished pods through `uncountedTerminatedPods`, and write
/// the conditions and status that follow.
pub fn plan(snapshot: &Snapshot<'_>) -> Plan {
    let mut plan = Plan {
        backoff: snapshot.backoff.clone(),
        ..Plan::default()
    };
    let Some(job_spec) = snapshot.job.spec.as_ref() else {
        plan.outcome.rule = "the Job has no spec".to_string();
        return plan;
    };
    let current = snapshot.job.status.clone().unwrap_or_default();
    if let Some(done) = status::finished(&current) {
        tracking::release_finished_job(snapshot, done, &mut plan);
        return plan;
    }
    let Some(spec) = Spec::read(snapshot, job_spec) else {
        spec::skip_unknown_completion_mode(&mut plan);
        return plan;
    };
    let claimed = claim::claim(snapshot, &spec, &mut plan);
    claim::restore_released(&claimed, &mut plan);
    if !plan.restore.is_empty() {
        // A pod that succeeded while being deleted counts, but only once its finalizer is
        // back: until then nothing else is planned, or its index (or its share of the
        // completions) would look missing and get a second pod.
        plan.outcome.rule = "keeping pods that succeeded while being deleted".to_string();
        plan.requeue_at_most(Duration::from_secs(1));
        return plan;
    }
    let pods = classify::classify(&spec, claimed, &current);
    plan.backoff = backoff::next_record(
        snapshot.backoff,
        &pods.new_succeeded,
        &pods.new_failed,
        snapshot.now,
    );
    let mut draft = Draft::new(&current, &spec);
    let verdict = verdict::decide(&spec, &pods, &draft, &mut plan);
    let managed = manage::manage_pods(&spec, &pods, verdict.as_ref(), &mut plan);
    let verdict = verdict.or_else(|| verdict::completions_reached(&spec, &pods, &managed));
    if verdict.is_none() && !spec.deleting {
        suspend::suspend_or_resume(&spec, &managed, &mut draft, &mut plan);
    }
    let tracked = tracking::track(&spec, &pods, &managed, verdict.as_ref(), &mut plan);
    let finish = conditions::finish(&spec, verdict, &managed, &tracked, &mut draft, &mut plan);
    let new_status = status::next(&current, draft, &finish, &managed, tracked);
    if new_status != status::normalized(&current) {
        plan.status = Some(new_status.clone());
    }
    plan.outcome.rule = rule::sentence(&spec, &new_status, &finish, &plan);
    plan
}

impl Plan {
    /// Asks to sync again within `after`; an earlier requeue stands.
    pub fn requeue_at_most(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }
}

impl JobEvent {
    fn new(type_: EventType, reason: &str, message: &str) -> Self {
        JobEvent {
            type_,
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }
}

/// "1 pod", "3 pods": counts in log lines (and `explain`) read as sentences.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A negative span (a clock behind a timestamp) counts as none.
fn to_duration(d: SignedDuration) -> Duration {
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}
