//! The sentence `explain` and the logs show for a plan: the rule that decides the Job's
//! state right now.

use std::time::Duration;

use super::conditions::Finish;
use super::spec::Spec;
use super::status::COMPLETE;
use super::{Plan, backoff, to_duration, verdict};
use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

pub fn sentence(spec: &Spec<'_>, status: &JobStatus, finish: &Finish, plan: &Plan) -> String {
    if let Some(c) = &finish.final_condition {
        return ending(c, finish.finished_now, status);
    }
    if spec.suspended {
        return "Job suspended: no pods run".to_string();
    }
    let failed = status.failed.unwrap_or(0);
    let succeeded = status.succeeded.unwrap_or(0);
    let mut parts = vec![match spec.completions {
        Some(c) => format!("{succeeded} of {c} completions"),
        None if succeeded > 0 => "a pod succeeded; done once no pod is active".to_string(),
        None => "done when any pod succeeds".to_string(),
    }];
    let per_index = spec.backoff_limit_per_index.is_some();
    if let Some(limit) = spec.backoff_limit_per_index {
        let failed_indexes = status.failed_indexes.as_deref().filter(|f| !f.is_empty());
        let mut part = format!(
            "backoffLimitPerIndex {limit}, failed indexes {}",
            failed_indexes.unwrap_or("none")
        );
        if let Some(max) = spec.job_spec.max_failed_indexes {
            part.push_str(&format!(" (maxFailedIndexes {max})"));
        }
        parts.push(part);
    } else {
        parts.push(format!(
            "backoffLimit {}, {failed} {} counted",
            spec.backoff_limit,
            if failed == 1 { "failure" } else { "failures" }
        ));
    }
    if let Some(wait) = plan.outcome.pod_backoff {
        let failures = plan.backoff.failures_after_last_success;
        parts.push(if per_index || failures == 0 {
            format!("next pod in {} s", seconds_up(wait))
        } else {
            format!(
                "next pod in {} s ({} s backoff after {failures} {})",
                seconds_up(wait),
                backoff::delay_for(failures).as_secs(),
                if failures == 1 { "failure" } else { "failures" }
            )
        });
    }
    if let (Some(seconds), Some(start)) =
        (spec.job_spec.active_deadline_seconds, &status.start_time)
    {
        parts.push(match verdict::deadline_left(seconds, start.0, spec.now) {
            Some(left) => format!(
                "activeDeadlineSeconds {seconds}, {} s left",
                seconds_up(to_duration(left))
            ),
            None => format!("activeDeadlineSeconds {seconds}, beyond any date: no deadline"),
        });
    }
    parts.join("; ")
}

/// A Job with a verdict: finished now, or waiting for its pods.
fn ending(c: &JobCondition, finished_now: bool, status: &JobStatus) -> String {
    let reason = c.reason.as_deref().unwrap_or("");
    if finished_now {
        return format!(
            "{} ({reason})",
            if c.type_ == COMPLETE {
                "Job complete"
            } else {
                "Job failed"
            }
        );
    }
    format!(
        "{} ({reason}); waiting for {} active, {} terminating and {} uncounted pods",
        if c.type_ == COMPLETE {
            "success criteria met"
        } else {
            "failure target reached"
        },
        status.active.unwrap_or(0),
        status.terminating.unwrap_or(0),
        status.uncounted_terminated_pods.as_ref().map_or(0, |u| u
            .succeeded
            .iter()
            .chain(u.failed.iter())
            .flatten()
            .count())
    )
}

/// Whole seconds, rounded up: "next pod in 1 s" rather than "in 0 s" for 300 ms.
fn seconds_up(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}
