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
