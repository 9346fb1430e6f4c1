//! The Job's spec as one sync reads it: upstream's defaults applied once, so every stage
//! asks the same question the same way. With it goes the sync's clock.

use k8s_openapi::api::batch::v1::{Job, JobSpec, PodFailurePolicy};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::{EventType, JobEvent, Plan, Snapshot, pods};

/// What every stage reads of the Job; built once per sync by [`Spec::read`].
pub struct Spec<'a> {
    pub job: &'a Job,
    pub job_spec: &'a JobSpec,
    pub indexed: bool,
    pub completions: Option<i32>,
    /// `completions` where set, else 0: the number of completion indexes an Indexed Job has.
    pub index_count: i32,
    /// Read only for Indexed Jobs: per-index limits mean nothing without indexes.
    pub backoff_limit_per_index: Option<i32>,
    /// Defaults to 6, or to unlimited where backoffLimitPerIndex counts the failures.
    pub backoff_limit: i32,
    pub parallelism: i32,
    /// podReplacementPolicy `Failed` (the default with a podFailurePolicy): terminating
    /// pods are neither replaced nor counted as failed.
    pub only_replace_failed: bool,
    pub suspended: bool,
    pub pod_failure_policy: Option<&'a PodFailurePolicy>,
    /// The Job is being deleted: it only winds down.
    pub deleting: bool,
    pub now: Timestamp,
}

impl<'a> Spec<'a> {
    /// `None` for a completion mode this controller does not know (a newer API's).
    pub fn read(snapshot: &Snapshot<'a>, job_spec: &'a JobSpec) -> Option<Self> {
        let job = snapshot.job;
        let indexed = match job_spec.completion_mode.as_deref() {
            None | Some("NonIndexed") => false,
            Some("Indexed") => true,
            Some(_) => return None,
        };
        let backoff_limit_per_index = if indexed {
            job_spec.backoff_limit_per_index
        } else {
            None
        };
        let backoff_limit =
            job_spec
                .backoff_limit
                .unwrap_or(if backoff_limit_per_index.is_some() {
                    i32::MAX
                } else {
                    6
                });
        let only_replace_failed = match job_spec.pod_replacement_policy.as_deref() {
            Some("Failed") => true,
            Some(_) => false,
            None => job_spec.pod_failure_policy.is_some(),
        };
        Some(Spec {
            job,
            job_spec,
            indexed,
            completions: job_spec.completions,
            index_count: job_spec.completions.unwrap_or(0),
            backoff_limit_per_index,
            backoff_limit,
            parallelism: job_spec.parallelism.unwrap_or(1).max(0),
            only_replace_failed,
            suspended: job_spec.suspend == Some(true),
            pod_failure_policy: job_spec.pod_failure_policy.as_ref(),
            deleting: job.metadata.deletion_timestamp.is_some(),
            now: snapshot.now,
        })
    }

    /// The pod's completion index when it is one of the Job's (below `completions`).
    pub fn valid_index(&self, pod: &Pod) -> Option<i32> {
        pods::completion_index(pod).filter(|i| *i < self.index_count)
    }

    /// Whether a finished pod counts at all: in an Indexed Job only with a valid index.
    pub fn countable(&self, pod: &Pod) -> bool {
        !self.indexed || self.valid_index(pod).is_some()
    }

    pub fn is_failed(&self, pod: &Pod) -> bool {
        pods::is_failed(pod, self.only_replace_failed)
    }
}

pub fn skip_unknown_completion_mode(plan: &mut Plan) {
    plan.events.push(JobEvent::new(
        EventType::Warning,
        "UnknownCompletionMode",
        "Skipped Job sync because completion mode is unknown",
    ));
    plan.outcome.rule = "the completion mode is unknown; the Job is not synced".to_string();
}
