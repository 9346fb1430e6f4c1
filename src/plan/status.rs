//! The Job status: condition types, reasons and helpers, the status a sync leaves, and
//! the comparison that decides whether it is written.

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::conditions::Finish;
use super::manage::Managed;
use super::spec::Spec;
use super::tracking::Tracked;

pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const FAILURE_TARGET: &str = "FailureTarget";
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
pub const SUSPENDED: &str = "Suspended";

pub const REASON_COMPLETIONS_REACHED: &str = "CompletionsReached";
pub const MESSAGE_COMPLETIONS_REACHED: &str = "Reached expected number of succeeded pods";
pub const REASON_BACKOFF_LIMIT: &str = "BackoffLimitExceeded";
pub const MESSAGE_BACKOFF_LIMIT: &str = "Job has reached the specified backoff limit";
pub const REASON_DEADLINE: &str = "DeadlineExceeded";
pub const MESSAGE_DEADLINE: &str = "Job was active longer than specified deadline";
pub const REASON_POD_FAILURE_POLICY: &str = "PodFailurePolicy";
pub const REASON_MAX_FAILED_INDEXES: &str = "MaxFailedIndexesExceeded";
pub const MESSAGE_MAX_FAILED_INDEXES: &str =
    "Job has exceeded the specified maximal number of failed indexes";
pub const REASON_FAILED_INDEXES: &str = "FailedIndexes";
pub const MESSAGE_FAILED_INDEXES: &str = "Job has failed indexes";
pub const REASON_SUCCESS_POLICY: &str = "SuccessPolicy";

pub fn conditions(status: &JobStatus) -> &[JobCondition] {
    status.conditions.as_deref().unwrap_or_default()
}

pub fn find<'a>(conditions: &'a [JobCondition], type_: &str) -> Option<&'a JobCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[JobCondition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition to the given status/reason/message (replacing it, timestamps included,
/// when any differs). A False condition is never added where none exists. Returns whether
/// the list changed.
pub fn ensure(
    list: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    if let Some(c) = list.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status
            || c.reason.as_deref().unwrap_or("") != reason
            || c.message.as_deref().unwrap_or("") != message
        {
            *c = new_condition(type_, status, reason, message, now);
            return true;
        }
        return false;
    }
    if status != "False" {
        list.push(new_condition(type_, status, reason, message, now));
        return true;
    }
    false
}

/// The Job's terminal condition (Complete or Failed, True), if finished.
pub fn finished(status: &JobStatus) -> Option<&JobCondition> {
    conditions(status)
        .iter()
        .find(|c| (c.type_ == COMPLETE || c.type_ == FAILED) && c.status == "True")
}

/// The status as the apiserver would hand it back, for "did anything change" checks:
/// zero counters, empty strings and empty lists are omitted.
pub fn normalized(status: &JobStatus) -> JobStatus {
    let mut s = status.clone();
    for counter in [&mut s.active, &mut s.succeeded, &mut s.failed] {
        if *counter == Some(0) {
            *counter = None;
        }
    }
    if s.completed_indexes.as_deref() == Some("") {
        s.completed_indexes = None;
    }
    let uncounted = s.uncounted_terminated_pods.take().unwrap_or_default();
    let non_empty = |v: Option<Vec<String>>| v.filter(|v| !v.is_empty());
    s.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: non_empty(uncounted.succeeded),
        failed: non_empty(uncounted.failed),
    });
    if s.conditions.as_ref().is_some_and(Vec::is_empty) {
        s.conditions = None;
    }
    s
}

/// What the stages of a sync edit in place before the status is put together.
pub struct Draft {
    pub start_time: Option<Time>,
    pub conditions: Vec<JobCondition>,
}

impl Draft {
    /// startTime is set on the first sync of an unsuspended Job.
    pub fn new(current: &JobStatus, spec: &Spec<'_>) -> Self {
        let start_time = current.start_time.clone();
        Draft {
            start_time: start_time.or_else(|| (!spec.suspended).then_some(Time(spec.now))),
            conditions: current.conditions.clone().unwrap_or_default(),
        }
    }
}

/// The status after this sync: the current one with every stage's result in it.
pub fn next(
    current: &JobStatus,
    draft: Draft,
    finish: &Finish,
    managed: &Managed<'_>,
    tracked: Tracked,
) -> JobStatus {
    let Draft {
        start_time,
        conditions,
    } = draft;
    let mut status = JobStatus {
        start_time,
        ..current.clone()
    };
    if let Some(completed) = &tracked.completed_indexes {
        let text = completed.to_string();
        status.completed_indexes = (!text.is_empty()).then_some(text);
        if let Some(failed) = &tracked.failed_indexes {
            status.failed_indexes = Some(failed.to_string());
        }
    }
    if finish.finished_now
        && let Some(c) = &finish.final_condition
        && c.type_ == COMPLETE
    {
        // Never before startTime (the apiserver rejects that): a startTime written by a
        // clock ahead of ours moves it up.
        let completed = find(&conditions, COMPLETE).and_then(|c| c.last_transition_time.clone());
        status.completion_time = match (completed, &status.start_time) {
            (Some(at), Some(start)) if at.0 < start.0 => Some(start.clone()),
            (completed, _) => completed,
        };
    }
    status.active = Some(managed.active);
    status.ready = Some(managed.ready);
    status.terminating = Some(managed.terminating);
    status.succeeded = Some(tracked.succeeded);
    status.failed = Some(tracked.failed);
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    let non_empty = |v: Vec<String>| (!v.is_empty()).then_some(v);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: non_empty(tracked.uncounted_succeeded),
        failed: non_empty(tracked.uncounted_failed),
    });
    normalized(&status)
}
