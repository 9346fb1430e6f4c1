//! The end-of-run checks. Each returns the violations it found, described, so the report
//! can list them; an empty list everywhere is a passing run.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::observer::{Observed, TRACKING_FINALIZER};
use crate::scenario::{Action, Plan, Policy, Shape};
use crate::shared::mask_pod_names;

/// What the user (the driver and the second writer) last wrote to a Job, from the write's
/// response: it must still be there at the end.
#[derive(Debug, Clone)]
pub struct UserFields {
    pub resource_version: u64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: Value,
}

impl UserFields {
    pub fn of(job: &Job) -> UserFields {
        UserFields {
            resource_version: job
                .resource_version()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            labels: job.labels().clone(),
            annotations: job.annotations().clone(),
            spec: serde_json::to_value(&job.spec).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Checks {
    pub compared: u64,
    /// Jobs whose twins the driver could not drive alike (a suspension skipped or never
    /// confirmed on one side): compared without their `Suspended` condition. Not a
    /// violation; listed so a run shows how many there were.
    pub uneven: Vec<String>,
    pub mismatches: Vec<String>,
    pub over_counts: Vec<String>,
    pub max_over_count: i32,
    pub leaked_finalizers: Vec<String>,
    pub duplicates: Vec<String>,
    pub user_fields_changed: Vec<String>,
    pub deletion: Vec<String>,
    pub unfinished: Vec<String>,
    pub status_422: u64,
    pub two_writers: Vec<String>,
}

impl Checks {
    pub fn violations(&self) -> u64 {
        [
            &self.mismatches,
            &self.over_counts,
            &self.leaked_finalizers,
            &self.duplicates,
            &self.user_fields_changed,
            &self.deletion,
            &self.unfinished,
            &self.two_writers,
        ]
        .iter()
        .map(|v| v.len() as u64)
        .sum::<u64>()
            + self.status_422
    }
}

/// The status fields two controllers must agree on given the same pod outcomes: all but
/// timestamps, with the Job's own pod names in messages replaced by `<pod>`.
///
/// A finished Job's `Suspended` condition is compared by its presence only. Both
/// controllers update it only while a Job is unfinished, so after a resume it reads
/// "resumed" only if a status write landed between the resume and the last pod's finish:
/// that is timing, not outcome (in one run the built-in controller's writes met 409s for
/// the whole 2 s its resumed pods ran, and its twin completed still reading "suspended").
pub fn comparable(job_name: &str, status: &JobStatus) -> Value {
    let conditions = status.conditions.iter().flatten();
    let finished = conditions
        .clone()
        .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True");
    let conditions: Vec<Value> = conditions
        .map(|c| {
            if finished && c.type_ == "Suspended" {
                return json!({"type": c.type_, "status": "(either: the Job finished)"});
            }
            let message = c.message.as_deref().map(|m| mask_pod_names(m, job_name));
            json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": message})
        })
        .collect();
    let uncounted = status.uncounted_terminated_pods.as_ref().map_or(0, |u| {
        u.succeeded.as_ref().map_or(0, Vec::len) + u.failed.as_ref().map_or(0, Vec::len)
    });
    json!({
        "active": status.active.unwrap_or(0),
        "ready": status.ready.unwrap_or(0),
        "terminating": status.terminating.unwrap_or(0),
        "succeeded": status.succeeded.unwrap_or(0),
        "failed": status.failed.unwrap_or(0),
        "completedIndexes": status.completed_indexes.clone().filter(|s| !s.is_empty()),
        "failedIndexes": status.failed_indexes.clone(),
        "conditions": conditions,
        "hasStartTime": status.start_time.is_some(),
        "hasCompletionTime": status.completion_time.is_some(),
        "uncounted": uncounted,
    })
}

/// The final status of every reference Job (the built-in controller's twin), comparable.
pub fn references(plans: &[Plan], jobs: &HashMap<String, Job>) -> BTreeMap<String, Value> {
    plans
        .iter()
        .filter(|p| !p.deleted())
        .filter_map(|p| {
            let job = jobs.get(&p.reference())?;
            let status = job.status.clone().unwrap_or_default();
            Some((p.name.clone(), comparable(&p.reference(), &status)))
        })
        .collect()
}

/// Our final statuses against the references. A Job in `uneven` is compared without its
/// `Suspended` condition: the driver suspended or resumed its twins differently (a step
/// skipped or unconfirmed on one side, see the driver's `SuspendRunning`), so that
/// condition tells how the driver fared, not how the controllers did.
pub fn twins(
    plans: &[Plan],
    jobs: &HashMap<String, Job>,
    (refs, uneven): (&BTreeMap<String, Value>, &BTreeSet<String>),
    c: &mut Checks,
) {
    for p in plans.iter().filter(|p| !p.deleted()) {
        let ours = jobs
            .get(&p.ours())
            .map(|j| comparable(&p.ours(), &j.status.clone().unwrap_or_default()));
        let mut reference = refs.get(&p.name).cloned();
        let mut ours = ours;
        if uneven.contains(&p.name) {
            c.uneven.push(p.name.clone());
            ours = ours.map(without_suspended);
            reference = reference.map(without_suspended);
        }
        c.compared += 1;
        if ours != reference {
            c.mismatches.push(format!(
                "{}: ours {} ≠ built-in {}",
                p.name,
                ours.unwrap_or(Value::Null),
                reference.unwrap_or(Value::Null)
            ));
        }
    }
}

/// A [`comparable`] status without its `Suspended` condition.
fn without_suspended(mut status: Value) -> Value {
    if let Some(conditions) = status["conditions"].as_array_mut() {
        conditions.retain(|c| c["type"] != "Suspended");
    }
    status
}

/// No Job of ours ever showed more succeeded or failed pods than the pods seen justify.
/// Deleted Jobs are left out: the garbage collector may delete their finished pods while
/// the watch is down (an apiserver restart), so the watch never sees them finish.
pub fn over_counting(plans: &[Plan], seen: &Observed, c: &mut Checks) {
    let mut justified: HashMap<&str, (i32, i32)> = HashMap::new();
    for pod in seen.pods.values() {
        let e = justified.entry(pod.job.as_str()).or_default();
        e.0 += i32::from(pod.ever_succeeded);
        e.1 += i32::from(pod.ever_failed || pod.ever_deleted_unfinished);
    }
    for p in plans.iter().filter(|p| !p.deleted()) {
        let name = p.ours();
        let Some(job) = seen.jobs.get(&name) else {
            continue;
        };
        let (succeeded, failed) = justified.get(name.as_str()).copied().unwrap_or_default();
        let over = (job.max_succeeded - succeeded).max(job.max_failed - failed);
        c.max_over_count = c.max_over_count.max(over);
        if over > 0 {
            c.over_counts.push(format!(
                "{name}: status showed succeeded {} / failed {}, pods seen {succeeded} / {failed}",
                job.max_succeeded, job.max_failed
            ));
        }
    }
}

/// Live-pod crowding the observer saw, and more succeeded pods than a Job can use.
pub fn duplicates(plans: &[Plan], seen: &Observed, c: &mut Checks) {
    let ours: HashMap<String, &Plan> = plans.iter().map(|p| (p.ours(), p)).collect();
    c.duplicates.extend(
        seen.crowding
            .iter()
            .filter(|d| d.split(':').next().is_some_and(|j| ours.contains_key(j)))
            .cloned(),
    );
    let mut succeeded: HashMap<(&str, Option<&str>), i32> = HashMap::new();
    for pod in seen.pods.values().filter(|p| p.ever_succeeded) {
        *succeeded
            .entry((pod.job.as_str(), pod.index.as_deref()))
            .or_default() += 1;
    }
    for ((job, index), n) in succeeded {
        let Some(plan) = ours.get(job) else { continue };
        let most = if plan.shape == Shape::Indexed {
            1
        } else {
            plan.completions
        };
        if n > most {
            c.duplicates.push(format!(
                "{job}: {n} succeeded pods for index {index:?}, at most {most}"
            ));
        }
    }
}

/// No pod holds the tracking finalizer at the end.
pub fn finalizers(pods: &[Pod], c: &mut Checks) {
    for pod in pods {
        if pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER) {
            c.leaked_finalizers.push(pod.name_any());
        }
    }
}

/// Deleted Jobs are gone; their pods are gone too, or orphaned (Orphan).
pub fn deletions(plans: &[Plan], jobs: &HashMap<String, Job>, pods: &[Pod], c: &mut Checks) {
    for p in plans {
        let Action::Delete(policy) = p.action else {
            continue;
        };
        for name in [p.ours(), p.reference()] {
            if jobs.contains_key(&name) {
                c.deletion.push(format!("{name} ({policy:?}) still exists"));
            }
            let left: Vec<&Pod> = pods
                .iter()
                .filter(|pod| pod.labels().get("batch.kubernetes.io/job-name") == Some(&name))
                .collect();
            let owned = left
                .iter()
                .filter(|pod| !pod.owner_references().is_empty())
                .count();
            match policy {
                Policy::Orphan if owned > 0 => {
                    c.deletion.push(format!("{name}: {owned} pods still owned"))
                }
                Policy::Background | Policy::Foreground if !left.is_empty() => c
                    .deletion
                    .push(format!("{name} ({policy:?}): {} pods left", left.len())),
                _ => {}
            }
        }
    }
}

/// Every Job of ours that is not deleted finished; labels, annotations and spec are as the
/// user last wrote them.
pub fn user_fields(
    plans: &[Plan],
    jobs: &HashMap<String, Job>,
    book: &HashMap<String, UserFields>,
    c: &mut Checks,
) {
    for p in plans.iter().filter(|p| !p.deleted()) {
        let name = p.ours();
        let Some(job) = jobs.get(&name) else {
            c.unfinished.push(format!("{name}: missing"));
            continue;
        };
        if !finished(job) {
            c.unfinished.push(format!("{name}: not finished"));
        }
        let Some(wrote) = book.get(&name) else {
            continue;
        };
        let now = UserFields::of(job);
        for (what, same) in [
            ("labels", now.labels == wrote.labels),
            ("annotations", now.annotations == wrote.annotations),
            ("spec", now.spec == wrote.spec),
        ] {
            if !same {
                c.user_fields_changed
                    .push(format!("{name}: {what} changed"));
            }
        }
    }
}

/// The Job has Complete or Failed and nothing uncounted.
pub fn finished(job: &Job) -> bool {
    let Some(status) = &job.status else {
        return false;
    };
    let done = status
        .conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    let uncounted = status.uncounted_terminated_pods.as_ref().is_some_and(|u| {
        u.succeeded.as_ref().is_some_and(|v| !v.is_empty())
            || u.failed.as_ref().is_some_and(|v| !v.is_empty())
    });
    done && !uncounted
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::JobCondition;

    use super::*;

    fn status(conditions: &[(&str, &str, &str)]) -> JobStatus {
        JobStatus {
            succeeded: Some(2),
            conditions: Some(
                conditions
                    .iter()
                    .map(|(type_, status, reason)| JobCondition {
                        type_: type_.to_string(),
                        status: status.to_string(),
                        reason: Some(reason.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_finished_jobs_suspended_condition_counts_by_presence_only() {
        let resumed = ("Suspended", "False", "JobResumed");
        let suspended = ("Suspended", "True", "JobSuspended");
        let complete = ("Complete", "True", "CompletionsReached");
        assert_eq!(
            comparable("j", &status(&[resumed, complete])),
            comparable("j", &status(&[suspended, complete]))
        );
        assert_ne!(
            comparable("j", &status(&[resumed, complete])),
            comparable("j", &status(&[complete]))
        );
        assert_ne!(
            comparable("j", &status(&[resumed])),
            comparable("j", &status(&[suspended]))
        );
    }

    #[test]
    fn an_unevenly_driven_job_is_compared_without_its_suspended_condition() {
        let plans = crate::scenario::plans(40, 7, std::time::Duration::from_secs(60));
        let p = plans
            .iter()
            .find(|p| !p.deleted())
            .expect("a Job kept to the end");
        let suspended = ("Suspended", "True", "JobSuspended");
        let resumed = ("Suspended", "False", "JobResumed");
        let job = |conditions: &[(&str, &str, &str)]| Job {
            status: Some(status(conditions)),
            ..Default::default()
        };
        let check =
            |ours: &[(&str, &str, &str)], reference: &[(&str, &str, &str)], uneven: bool| {
                let jobs = HashMap::from([(p.ours(), job(ours))]);
                let refs = BTreeMap::from([(
                    p.name.clone(),
                    comparable(&p.reference(), &status(reference)),
                )]);
                let uneven: BTreeSet<String> = uneven.then(|| p.name.clone()).into_iter().collect();
                let mut c = Checks::default();
                twins(std::slice::from_ref(p), &jobs, (&refs, &uneven), &mut c);
                (c.mismatches.len(), c.uneven.len())
            };
        // Suspended on one side only: a mismatch, unless the driver drove the twins unevenly.
        assert_eq!(check(&[suspended, resumed], &[], false), (1, 0));
        assert_eq!(check(&[resumed], &[], true), (0, 1));
        // Everything else is still compared.
        let complete = ("Complete", "True", "CompletionsReached");
        assert_eq!(check(&[resumed, complete], &[], true), (1, 1));
    }
}
