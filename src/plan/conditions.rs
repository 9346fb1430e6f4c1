//! The terminal conditions, each in two steps: SuccessCriteriaMet then Complete,
//! FailureTarget then Failed, the final one only once no pod is left to count or wait for;
//! and the events that announce the end.

use k8s_openapi::api::batch::v1::JobCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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
        // The apiserver requires startTime on a finished Job; a suspended one that ends
        // (its last pod succeeded as it was suspended) has none.
        if draft.start_time.is_none() {
            draft.start_time = Some(Time(now));
        }
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

#[cfg(test)]
mod tests {

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::plan::status::*;
    use crate::plan::testing::*;
    use crate::plan::*;

    #[test]
    fn job_completes_in_two_steps() {
        let mut sim = Sim::new(job(Some(2), 2));
        sim.apply(&sim.plan(), 4);
        assert_eq!(sim.pods.len(), 2);
        sim.set_phase(0, "Succeeded");
        sim.set_phase(1, "Succeeded");
        let p = sim.plan();
        let s = p.status.clone().unwrap();
        assert!(has_cond(&s, SUCCESS_CRITERIA_MET));
        assert!(!has_cond(&s, COMPLETE));
        sim.apply(&p, 4);
        let p2 = sim.plan();
        let s2 = p2.status.clone().unwrap();
        assert!(has_cond(&s2, COMPLETE));
        let c = find(conditions(&s2), COMPLETE).unwrap();
        assert_eq!(c.reason.as_deref(), Some(REASON_COMPLETIONS_REACHED));
        assert_eq!(c.message.as_deref(), Some(MESSAGE_COMPLETIONS_REACHED));
        assert_eq!(s2.completion_time, c.last_transition_time);
        assert_eq!(s2.succeeded, Some(2));
        assert_eq!(
            p2.events,
            vec![JobEvent {
                type_: EventType::Normal,
                reason: "Completed".into(),
                message: "Job completed".into()
            }]
        );
        assert_eq!(
            p2.outcome.finished,
            Some(("succeeded".into(), REASON_COMPLETIONS_REACHED.into()))
        );
        sim.apply(&p2, 4);
        assert!(sim.plan().is_noop());
    }

    #[test]
    fn too_many_succeeded_pods_is_reported() {
        let mut j = running(job(Some(1), 2), 0);
        st(&mut j).succeeded = Some(2);
        st(&mut j).conditions = Some(vec![cond(
            SUCCESS_CRITERIA_MET,
            REASON_COMPLETIONS_REACHED,
            MESSAGE_COMPLETIONS_REACHED,
        )]);
        let p = run(&j, &[]);
        let reasons: Vec<&str> = p.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, vec!["TooManySucceededPods", "Completed"]);
    }

    #[test]
    fn existing_failure_target_becomes_failed_when_pods_are_gone() {
        let mut j = running(job(Some(1), 1), 0);
        st(&mut j).failed = Some(7);
        st(&mut j).conditions = Some(vec![cond(
            FAILURE_TARGET,
            REASON_BACKOFF_LIMIT,
            MESSAGE_BACKOFF_LIMIT,
        )]);
        let p = run(&j, &[]);
        let s = p.status.unwrap();
        let f = find(conditions(&s), FAILED).unwrap();
        assert_eq!(f.reason.as_deref(), Some(REASON_BACKOFF_LIMIT));
        assert_eq!(f.last_transition_time, Some(Time(now())));
        assert!(s.completion_time.is_none());
        assert_eq!(
            p.outcome.finished,
            Some(("failed".into(), REASON_BACKOFF_LIMIT.into()))
        );
    }

    #[test]
    fn failed_waits_for_terminating_pods() {
        let mut j = running(job(Some(1), 1), 0);
        st(&mut j).conditions = Some(vec![cond(
            FAILURE_TARGET,
            REASON_BACKOFF_LIMIT,
            MESSAGE_BACKOFF_LIMIT,
        )]);
        let p = run(&j, &[pod("a", "Running").deleting().no_finalizer()]);
        let s = p.status.unwrap();
        assert!(!has_cond(&s, FAILED));
        assert_eq!(s.terminating, Some(1));
    }

    #[test]
    fn a_job_that_completes_while_suspended_gets_a_start_time() {
        // The last pod succeeded as the Job was suspended: startTime was cleared, and the
        // apiserver wants one on a finished Job.
        let mut j = job(Some(1), 1);
        spec(&mut j).suspend = Some(true);
        st(&mut j).succeeded = Some(1);
        let s = run(&j, &[]).status.unwrap();
        assert!(has_cond(&s, COMPLETE));
        assert_eq!(s.start_time, Some(Time(now())));
    }

    #[test]
    fn completion_time_is_never_before_a_start_time_from_a_clock_ahead() {
        let mut j = running(job(Some(1), 1), 0);
        st(&mut j).start_time = Some(Time(t(5000)));
        st(&mut j).succeeded = Some(1);
        let s = run(&j, &[]).status.unwrap();
        assert!(has_cond(&s, COMPLETE));
        assert_eq!(s.completion_time, Some(Time(t(5000))));
    }
}
