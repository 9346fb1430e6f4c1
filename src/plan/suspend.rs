//! Suspend and resume of a Job without a verdict: the Suspended condition and its events,
//! and startTime, which stops while suspended and starts afresh on resume. (Its pods are
//! deleted in `manage`.)

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::manage::Managed;
use super::spec::Spec;
use super::status::{Draft, SUSPENDED, ensure};
use super::{EventType, JobEvent, Plan};

pub fn suspend_or_resume(
    spec: &Spec<'_>,
    managed: &Managed<'_>,
    draft: &mut Draft,
    plan: &mut Plan,
) {
    let (conditions, now) = (&mut draft.conditions, spec.now);
    if spec.suspended {
        if ensure(
            conditions,
            SUSPENDED,
            "True",
            "JobSuspended",
            "Job suspended",
            now,
        ) {
            plan.events.push(JobEvent::new(
                EventType::Normal,
                "Suspended",
                "Job suspended",
            ));
            plan.decisions.push("Job suspended".to_string());
        }
        // A suspended Job with no pod left running has not started: the 1.37 job
        // controller clears startTime then, so a resume starts the clock afresh.
        if managed.active == 0 {
            draft.start_time = None;
        }
    } else if ensure(
        conditions,
        SUSPENDED,
        "False",
        "JobResumed",
        "Job resumed",
        now,
    ) {
        plan.events
            .push(JobEvent::new(EventType::Normal, "Resumed", "Job resumed"));
        plan.decisions.push("Job resumed".to_string());
        // activeDeadlineSeconds counts from the resume.
        draft.start_time = Some(Time(now));
        if let Some(seconds) = spec.job_spec.active_deadline_seconds {
            plan.requeue_after = Some(Duration::from_secs(seconds.max(0) as u64));
        }
    }
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::plan::status::*;
    use crate::plan::testing::*;

    #[test]
    fn job_created_suspended_has_no_start_time_and_no_pods() {
        let mut j = job(Some(2), 2);
        spec(&mut j).suspend = Some(true);
        let p = run(&j, &[]);
        assert!(p.create.is_empty());
        let s = p.status.unwrap();
        assert!(s.start_time.is_none());
        let c = find(conditions(&s), SUSPENDED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref(), c.message.as_deref()),
            ("True", Some("JobSuspended"), Some("Job suspended"))
        );
        assert_eq!(p.events[0].reason, "Suspended");
    }

    #[test]
    fn suspending_running_job_deletes_pods_without_counting_them() {
        let mut j = running(job(Some(3), 2), 2);
        spec(&mut j).suspend = Some(true);
        let p = run(&j, &[pod("a", "Running").ready(), pod("b", "Pending")]);
        assert_eq!(names(&p.delete), vec!["b", "a"]);
        let s = p.status.unwrap();
        assert_eq!(
            (s.active, s.ready, s.terminating, s.failed),
            (None, Some(0), Some(2), None)
        );
        assert_eq!(
            s.start_time, None,
            "the built-in controller clears startTime once no pod of a suspended Job runs"
        );
        assert!(has_cond(&s, SUSPENDED));
    }

    #[test]
    fn resuming_resets_start_time_and_emits_resumed() {
        let mut j = running(job(Some(3), 2), 0);
        spec(&mut j).active_deadline_seconds = Some(2000);
        st(&mut j).conditions = Some(vec![new_condition(
            SUSPENDED,
            "True",
            "JobSuspended",
            "Job suspended",
            t(0),
        )]);
        let p = run(&j, &[]);
        let s = p.status.unwrap();
        assert_eq!(s.start_time, Some(Time(now())));
        let c = find(conditions(&s), SUSPENDED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref(), c.message.as_deref()),
            ("False", Some("JobResumed"), Some("Job resumed"))
        );
        assert_eq!(p.events[0].reason, "Resumed");
        assert_eq!(p.create.len(), 2);
        assert_eq!(
            p.requeue_after,
            Some(Duration::from_secs(2000)),
            "the deadline counts from the resume"
        );
    }

    #[test]
    fn unsuspended_job_without_suspended_condition_adds_none() {
        let j = job(Some(1), 1);
        let s = run(&j, &[]).status.unwrap();
        assert!(find(conditions(&s), SUSPENDED).is_none());
    }
}
