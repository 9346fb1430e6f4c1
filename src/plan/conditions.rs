//! The terminal conditions, each in two steps: SuccessCriteriaMet then Complete,
//! FailureTarget then Failed, the final one only once no pod is left to count or wait for;
//! and the events that announce the end.

use k8s_openapi::api::batch::v1::JobCondition;
use k8s_openapi::jiff::Timestamp;

use super::manage::Managed;
use super::spec::Spec;
use super::status::*;
use super::tracking::Tracked;
use super::{EventType, JobEvent, Plan};

pub struct Finish {
    /// Complete or Failed: where the Job with a verdict ends.
    pub final_condition: Option<JobCondition>,
    /// This plan writes the final condition.
    pub finished_now: bool,
}

pub fn finish(
    spec: &Spec<'_>,
    verdict: Option<JobCondition>,
    managed: &Managed<'_>,
    tracked: &Tracked,
    draft: &mut Draft,
    plan: &mut Plan,
) -> Finish {
    let (conditions, now) = (&mut draft.conditions, spec.now);
    let final_condition = verdict.map(|c| write_interim(c, conditions, now, plan));
    let nothing_left = tracked.uncounted_succeeded.is_empty()
        && tracked.uncounted_failed.is_empty()
        && managed.terminating == 0
        && managed.active == 0;
    let mut finished_now = false;
    if let Some(c) = &final_condition
        && !tracked.reached_max_uncounted
        && nothing_left
    {
        let reason = c.reason.clone().unwrap_or_default();
        let message = c.message.clone().unwrap_or_default();
        ensure(conditions, &c.type_, "True", &reason, &message, now);
        announce(spec, &c.type_, &reason, &message, tracked.succeeded, plan);
        finished_now = true;
    }
    if final_condition.is_some() {
        // Done, or only the pods are left to wait for: their events bring the Job back.
        plan.requeue_after = None;
    }
    Finish {
        final_condition,
        finished_now,
    }
}

/// Writes the interim condition (FailureTarget, SuccessCriteriaMet) unless it is there, and
/// returns the final one it leads to.
fn write_interim(
    c: JobCondition,
    conditions: &mut Vec<JobCondition>,
    now: Timestamp,
    plan: &mut Plan,
) -> JobCondition {
    let final_type = if c.type_ == FAILURE_TARGET {
        conditions.push(c.clone());
        plan.decisions.push(format!(
            "failure target: {} ({})",
            c.reason.as_deref().unwrap_or(""),
            c.message.as_deref().unwrap_or("")
        ));
        FAILED
    } else if c.type_ == SUCCESS_CRITERIA_MET {
        if !is_true(conditions, SUCCESS_CRITERIA_MET) {
            conditions.push(c.clone());
            plan.decisions.push(format!(
                "success criteria met: {}",
                c.reason.as_deref().unwrap_or("")
            ));
        }
        COMPLETE
    } else {
        return c;
    };
    new_condition(
        final_type,
        "True",
        c.reason.as_deref().unwrap_or(""),
        c.message.as_deref().unwrap_or(""),
        now,
    )
}

fn announce(
    spec: &Spec<'_>,
    type_: &str,
    reason: &str,
    message: &str,
    succeeded: i32,
    plan: &mut Plan,
) {
    if type_ == COMPLETE {
        if spec.completions.is_some_and(|c| succeeded > c) {
            plan.events.push(JobEvent::new(
                EventType::Warning,
                "TooManySucceededPods",
                "Too many succeeded pods running after completion count reached",
            ));
        }
        plan.events.push(JobEvent::new(
            EventType::Normal,
            "Completed",
            "Job completed",
        ));
        plan.outcome.finished = Some(("succeeded".to_string(), reason.to_string()));
        plan.decisions.push("Job completed".to_string());
    } else {
        plan.events
            .push(JobEvent::new(EventType::Warning, reason, message));
        plan.outcome.finished = Some(("failed".to_string(), reason.to_string()));
        plan.decisions.push(format!("Job failed: {reason}"));
    }
}
