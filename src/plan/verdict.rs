//! Whether the Job is done, in upstream's order: an existing SuccessCriteriaMet or
//! FailureTarget, podFailurePolicy FailJob, backoffLimit, activeDeadlineSeconds, then for
//! Indexed Jobs failed indexes and successPolicy; once pods are managed, completions.

use std::time::Duration;

use k8s_openapi::api::batch::v1::JobCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::claim::Claimed;
use super::classify::Classified;
use super::manage::Managed;
use super::spec::Spec;
use super::status::*;
use super::{Plan, failure_policy, pods, success_policy, to_duration};

/// The condition the Job is heading to, if any: SuccessCriteriaMet, FailureTarget, or Failed
/// where the FailureTarget is already written. While only activeDeadlineSeconds stands
/// between the Job and its end, the plan comes back at the deadline.
pub fn decide(
    spec: &Spec<'_>,
    pods: &Classified<'_>,
    draft: &Draft,
    plan: &mut Plan,
) -> Option<JobCondition> {
    let now = spec.now;
    already_decided(&draft.conditions, now)
        .or_else(|| fail_job_rule(spec, &pods.claimed, now))
        .or_else(|| backoff_limit_exceeded(spec, pods, now))
        .or_else(|| match active_deadline(spec, draft.start_time.as_ref()) {
            Ok(target) => target,
            Err(left) => {
                plan.requeue_at_most(left);
                None
            }
        })
        .or_else(|| pods.indexes.failure_target(spec, now))
        .or_else(|| success_policy_met(spec, pods, now))
}

/// A SuccessCriteriaMet or FailureTarget written before stands.
fn already_decided(conditions: &[JobCondition], now: Timestamp) -> Option<JobCondition> {
    if let Some(c) = find(conditions, SUCCESS_CRITERIA_MET).filter(|c| c.status == "True") {
        return Some(c.clone());
    }
    let c = find(conditions, FAILURE_TARGET).filter(|c| c.status == "True")?;
    Some(new_condition(
        FAILED,
        "True",
        c.reason.as_deref().unwrap_or(""),
        c.message.as_deref().unwrap_or(""),
        now,
    ))
}

fn failure_target(reason: &str, message: &str, now: Timestamp) -> JobCondition {
    new_condition(FAILURE_TARGET, "True", reason, message, now)
}

fn fail_job_rule(spec: &Spec<'_>, claimed: &Claimed<'_>, now: Timestamp) -> Option<JobCondition> {
    let message = claimed
        .owned
        .iter()
        .filter(|p| spec.is_failed(p))
        .find_map(|p| failure_policy::match_pod(spec.pod_failure_policy, p).fail_job_message)?;
    Some(failure_target(REASON_POD_FAILURE_POLICY, &message, now))
}

fn backoff_limit_exceeded(
    spec: &Spec<'_>,
    pods: &Classified<'_>,
    now: Timestamp,
) -> Option<JobCondition> {
    let exceeded =
        pods.failed > spec.backoff_limit || past_backoff_limit_on_failure(spec, &pods.claimed);
    exceeded.then(|| failure_target(REASON_BACKOFF_LIMIT, MESSAGE_BACKOFF_LIMIT, now))
}

/// restartPolicy OnFailure: container restarts of running and pending pods count as
/// failures (backoffLimit 0 tolerates none).
fn past_backoff_limit_on_failure(spec: &Spec<'_>, claimed: &Claimed<'_>) -> bool {
    let on_failure = spec
        .job_spec
        .template
        .spec
        .as_ref()
        .is_some_and(|s| s.restart_policy.as_deref() == Some("OnFailure"));
    if !on_failure {
        return false;
    }
    let restarts: i64 = claimed
        .owned
        .iter()
        .filter(|p| matches!(pods::phase(p), "Running" | "Pending"))
        .map(|p| pods::restart_count(p))
        .sum();
    if spec.backoff_limit == 0 {
        restarts > 0
    } else {
        restarts >= i64::from(spec.backoff_limit)
    }
}

/// activeDeadlineSeconds, which does not run while the Job is suspended: the FailureTarget
/// once it passed, else (`Err`) the time left.
fn active_deadline(
    spec: &Spec<'_>,
    start_time: Option<&Time>,
) -> Result<Option<JobCondition>, Duration> {
    let (Some(seconds), Some(start), false) = (
        spec.job_spec.active_deadline_seconds,
        start_time,
        spec.suspended,
    ) else {
        return Ok(None);
    };
    let allowed = SignedDuration::from_secs(seconds);
    let elapsed = spec.now.duration_since(start.0);
    if elapsed >= allowed {
        Ok(Some(failure_target(
            REASON_DEADLINE,
            MESSAGE_DEADLINE,
            spec.now,
        )))
    } else {
        Err(to_duration(allowed - elapsed))
    }
}

fn success_policy_met(
    spec: &Spec<'_>,
    pods: &Classified<'_>,
    now: Timestamp,
) -> Option<JobCondition> {
    if !spec.indexed {
        return None;
    }
    let message = success_policy::matched(
        spec.job_spec.success_policy.as_ref(),
        spec.index_count,
        &pods.indexes.completed,
    )?;
    Some(new_condition(
        SUCCESS_CRITERIA_MET,
        "True",
        REASON_SUCCESS_POLICY,
        &message,
        now,
    ))
}

/// Checked after pods are managed: `completions` succeeded pods (or, without completions,
/// one) and none left active.
pub fn completions_reached(
    spec: &Spec<'_>,
    pods: &Classified<'_>,
    managed: &Managed<'_>,
) -> Option<JobCondition> {
    // A Job being deleted only counts what finished, but it still reaches
    // SuccessCriteriaMet, as upstream's does, once every pod is accounted for.
    let (succeeded, active) = (pods.succeeded, managed.active);
    let complete = match spec.completions {
        None => succeeded > 0 && active == 0,
        Some(c) => succeeded >= c && active == 0,
    };
    complete.then(|| {
        new_condition(
            SUCCESS_CRITERIA_MET,
            "True",
            REASON_COMPLETIONS_REACHED,
            MESSAGE_COMPLETIONS_REACHED,
            spec.now,
        )
    })
}
