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

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

pub mod backoff;
pub mod failure_policy;
pub mod indexed;
pub mod pods;
pub mod status;
pub mod success_policy;
mod sync;
pub mod template;
#[cfg(test)]
mod tests;

pub use sync::{MAX_POD_CREATE_DELETE_PER_SYNC, MAX_UNCOUNTED_PODS};

/// The finalizer that keeps a finished pod around until the Job status counts it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

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

/// What to do next for one Job.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Pods to delete, least-advanced first. The executor removes their tracking finalizer
    /// before deleting them; they are not counted as failed.
    pub delete: Vec<PodRef>,
    /// Complete pod objects to create (metadata.generateName set, name unset).
    pub create: Vec<Pod>,
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
    }
}

/// Plans the next step for one Job. Pure: the same snapshot always gives the same plan.
///
/// Besides the order above, the executor is expected to apply `adopt` before writing
/// `status` (adopted pods are counted as owned, with the tracking finalizer), and to keep
/// `backoff` only once `status` was written (or when `status` is `None`), as the failures
/// it counts are the ones this plan moves into `uncountedTerminatedPods`.
pub fn plan(snapshot: &Snapshot<'_>) -> Plan {
    sync::plan(snapshot)
}
