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
            Deadline::Passed(target) => Some(target),
            Deadline::In(left) => {
                plan.requeue_at_most(left);
                None
            }
            Deadline::NotRunning => None,
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

/// Where activeDeadlineSeconds stands; it does not run while the Job is suspended.
enum Deadline {
    NotRunning,
    Passed(JobCondition),
    In(Duration),
}

fn active_deadline(spec: &Spec<'_>, start_time: Option<&Time>) -> Deadline {
    let (Some(seconds), Some(start), false) = (
        spec.job_spec.active_deadline_seconds,
        start_time,
        spec.suspended,
    ) else {
        return Deadline::NotRunning;
    };
    let Some(left) = deadline_left(seconds, start.0, spec.now) else {
        return Deadline::NotRunning;
    };
    if left.is_zero() || left.is_negative() {
        Deadline::Passed(failure_target(REASON_DEADLINE, MESSAGE_DEADLINE, spec.now))
    } else {
        Deadline::In(to_duration(left))
    }
}

/// Time left before activeDeadlineSeconds from `start` runs out (negative once past).
/// `None` when the deadline falls after the last time there is (year 9999: an
/// activeDeadlineSeconds near the int64 limit): a deadline never reached is no deadline.
pub fn deadline_left(seconds: i64, start: Timestamp, now: Timestamp) -> Option<SignedDuration> {
    let deadline = start.checked_add(SignedDuration::from_secs(seconds)).ok()?;
    Some(deadline.duration_since(now))
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

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use crate::plan::status::*;
    use crate::plan::testing::*;

    #[test]
    fn job_without_completions_finishes_after_first_success_and_no_active() {
        let j = running(job(None, 3), 3);
        let p = run(
            &j,
            &[
                pod("a", "Succeeded"),
                pod("b", "Running"),
                pod("c", "Running"),
            ],
        );
        assert!(p.create.is_empty() && p.delete.is_empty());
        let s = p.status.unwrap();
        assert!(!has_cond(&s, SUCCESS_CRITERIA_MET));
        let mut j2 = running(job(None, 3), 0);
        st(&mut j2).succeeded = Some(1);
        let p2 = run(&j2, &[pod("b", "Failed").no_finalizer()]);
        let s2 = p2.status.unwrap();
        assert!(has_cond(&s2, SUCCESS_CRITERIA_MET));
    }

    #[test]
    fn backoff_limit_exceeded_fails_the_job_in_steps() {
        let mut j = running(job(Some(5), 2), 2);
        spec(&mut j).backoff_limit = Some(1);
        st(&mut j).failed = Some(1);
        let pods = [pod("f", "Failed"), pod("r", "Running").ready()];
        let p = run(&j, &pods);
        let s = p.status.clone().unwrap();
        let ft = find(conditions(&s), FAILURE_TARGET).unwrap();
        assert_eq!(ft.reason.as_deref(), Some(REASON_BACKOFF_LIMIT));
        assert_eq!(ft.message.as_deref(), Some(MESSAGE_BACKOFF_LIMIT));
        let (_, mut f) = uncounted(&s);
        f.sort();
        assert_eq!(
            f,
            vec!["f-uid", "r-uid"],
            "the running pod counts as failed"
        );
        assert!(
            p.delete.is_empty(),
            "the running pod is deleted once counted"
        );
        assert_eq!(s.active, Some(1), "real active count");
        assert!(!has_cond(&s, FAILED));
    }

    #[test]
    fn on_failure_restarts_count_towards_backoff_limit() {
        for (limit, restarts, fails) in [(0, 1, true), (0, 0, false), (3, 2, false), (3, 3, true)] {
            let mut j = running(job(Some(1), 1), 1);
            spec(&mut j).template.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
            spec(&mut j).backoff_limit = Some(limit);
            let p = run(&j, &[pod("a", "Running").restarts(restarts)]);
            let s = status_after(&j, &p);
            assert_eq!(has_cond(&s, FAILURE_TARGET), fails, "{limit}/{restarts}");
        }
    }

    #[test]
    fn active_deadline_fails_job_or_requeues() {
        for (deadline, fails, requeue) in [
            (2000, false, Some(1000)),
            (1000, true, None),
            (10, true, None),
        ] {
            let mut j = running(job(Some(1), 1), 1);
            spec(&mut j).active_deadline_seconds = Some(deadline);
            let p = run(&j, &[pod("a", "Running")]);
            let s = status_after(&j, &p);
            assert_eq!(has_cond(&s, FAILURE_TARGET), fails, "{deadline}");
            if fails {
                assert_eq!(
                    find(conditions(&s), FAILURE_TARGET)
                        .unwrap()
                        .reason
                        .as_deref(),
                    Some(REASON_DEADLINE)
                );
            }
            assert_eq!(
                p.requeue_after,
                requeue.map(Duration::from_secs),
                "{deadline}"
            );
        }
    }

    #[test]
    fn active_deadline_is_not_checked_while_suspended() {
        let mut j = running(job(Some(1), 1), 0);
        spec(&mut j).active_deadline_seconds = Some(1);
        spec(&mut j).suspend = Some(true);
        let p = run(&j, &[]);
        assert!(!has_cond(&status_after(&j, &p), FAILURE_TARGET));
    }

    #[test]
    fn an_active_deadline_beyond_any_date_is_no_deadline() {
        // startTime ahead of the clock (another writer's clock) and activeDeadlineSeconds at
        // its limit: the deadline lies after year 9999.
        let mut j = running(job(Some(2), 1), 1);
        spec(&mut j).active_deadline_seconds = Some(i64::MAX);
        st(&mut j).start_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(
            5000,
        )));
        let p = run(&j, &[pod("a", "Running")]);
        assert!(p.status.is_none(), "{:?}", p.status);
        assert_eq!(p.requeue_after, None);
        assert!(
            p.outcome.rule.ends_with("no deadline"),
            "{}",
            p.outcome.rule
        );
        // A deadline within reach still counts down from startTime.
        spec(&mut j).active_deadline_seconds = Some(4001);
        let p = run(&j, &[pod("a", "Running")]);
        assert_eq!(p.requeue_after, Some(Duration::from_secs(4001 + 4000)));
        // Reached: the FailureTarget.
        st(&mut j).start_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(
            -3001,
        )));
        let s = run(&j, &[pod("a", "Running")]).status.unwrap();
        assert_eq!(
            find(conditions(&s), FAILURE_TARGET)
                .unwrap()
                .reason
                .as_deref(),
            Some(REASON_DEADLINE)
        );
    }
}
