//! Applies a [`Plan`] to the cluster. Knows the order of writes and how to read API errors,
//! nothing about Job rules: those live in the planner.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::act::budget::CreateBudget;
use crate::cluster::expectations::Expectations;
use crate::cluster::lenient::Lenient;
use crate::edge::metrics::SharedMetrics;
use crate::plan::pods::{
    has_annotation, has_tracking_finalizer, is_finished, is_ready, is_succeeded,
};
use crate::plan::status::normalized;
use crate::plan::{
    EventType, JobEvent, NewPod, Plan, PlanOutcome, PodRef, RELEASED_ANNOTATION, TRACKING_FINALIZER,
};

/// At most this many pod writes in flight at once for one Job.
pub const POD_WRITE_PARALLELISM: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("creating pods: {0}")]
    Create(#[source] kube::Error),
    #[error("deleting pod {pod}: {source}")]
    Delete {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching pod {pod}: {source}")]
    PatchPod {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the Job status: {0}")]
    Status(#[source] kube::Error),
    #[error("reading the Job: {0}")]
    ReadJob(#[source] kube::Error),
}

impl ExecuteError {
    /// A short word for the `reconcile_errors` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ExecuteError::Create(_) => "create_pod",
            ExecuteError::Delete { .. } => "delete_pod",
            ExecuteError::PatchPod { .. } => "patch_pod",
            ExecuteError::Status(_) => "write_status",
            ExecuteError::ReadJob(_) => "read_job",
        }
    }
}

/// What the caller should do after applying a plan.
#[derive(Debug)]
pub enum Step {
    /// Nothing more to do until a watch event or the plan's requeue time.
    Settled,
    /// The plan removed finalizers or otherwise moved state on; plan again right away.
    Again,
    /// The status write lost a race (409) or the Job is gone from under us: re-read the
    /// Job and plan again. None: the Job was deleted, or a pod to adopt changed; wait for
    /// the watch event that says so.
    Conflict(Option<Arc<Job>>),
}

/// The clients and records one sync writes through.
pub struct Executor<'a> {
    pub client: &'a Client,
    /// Shared by every sync: bounds the pod bodies being created at once.
    pub create_budget: &'a CreateBudget,
    pub expectations: &'a Expectations,
    pub events: &'a EventSink,
    pub metrics: &'a SharedMetrics,
    /// Requests wait for tokens of the client's limit: a plan that both counts finished
    /// pods and creates new ones counts first (see [`Executor::apply`]).
    pub tokens_short: bool,
    /// Make no creates in a plan that counts: the sync counts finished pods ahead of other
    /// work and leaves its creates to a later turn (the plan's status takes them back
    /// meanwhile).
    pub defer_creates: bool,
}

pub fn code_of(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    code_of(error) == Some(404)
}

/// What applying a plan came to.
#[derive(Debug)]
pub struct Applied {
    pub step: Step,
    /// When the plan's status was written, if it was: the status batcher's periods run
    /// from the write itself, not from the end of the finalizer removals after it.
    pub status_written_at: Option<Instant>,
    /// A pod create or delete failed. The rest of the plan was still applied, its status
    /// corrected for what did not happen (as upstream's manageJob does), so finished pods
    /// are counted and lose their finalizer while, say, a quota rejects every create; the
    /// caller retries the Job with backoff.
    pub pod_write_error: Option<ExecuteError>,
    /// The plan's creates were left for a later sync ([`Executor::defer_creates`]).
    pub creates_deferred: bool,
}

impl Applied {
    /// A step taken before any status write or pod write of this part of the plan.
    fn only(step: Step) -> Self {
        Applied {
            step,
            status_written_at: None,
            pod_write_error: None,
            creates_deferred: false,
        }
    }
}

/// What the creates or the deletes of one plan came to.
#[derive(Debug, Default)]
struct PodWrites {
    made: usize,
    /// Writes the plan counted on that were not made: failed, or not tried after a failure.
    missed: usize,
    /// Ready pods among the deletes missed (the plan counted them as no longer ready).
    missed_ready: usize,
    /// The first failure.
    error: Option<ExecuteError>,
}

impl Executor<'_> {
    /// Applies `plan`, computed from `job` and `pods`, in the order the planner assumes:
    /// deletes, creates, adoption, status, finalizer removals; then tells of it. While
    /// tokens are short, a plan that counts finished pods makes its creates last, and a
    /// sync told to defer its creates makes none.
    pub async fn apply(
        &self,
        job: &Arc<Job>,
        pods: &[Arc<Pod>],
        mut plan: Plan,
    ) -> Result<Applied, ExecuteError> {
        let job_uid = job.uid().unwrap_or_default();
        let job_ref = job.object_ref(&());
        let pods_api: Api<Pod> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());

        let deleted = self
            .delete_pods(&pods_api, &job_uid, pods, &plan.delete, &job_ref)
            .await;
        // Upstream creates before it counts. When every request waits for a token, that
        // makes the pods that finished wait for the creates of their successors: then the
        // status write and the finalizer removals go first, the status records the pods
        // that exist (the next write adds the new ones), and the creates follow.
        let counts = plan.status.is_some() || !plan.remove_finalizers.is_empty();
        let deferred = self.defer_creates && counts && !plan.create.is_empty();
        let count_first = deferred
            || (self.tokens_short && !plan.create.is_empty() && !plan.remove_finalizers.is_empty());
        let created = if count_first {
            // Made by write_the_rest after the count, or by a later sync when deferred;
            // none of them exists for the status.
            let missed = plan.create.len();
            if deferred {
                plan.create.clear();
            }
            PodWrites {
                missed,
                ..PodWrites::default()
            }
        } else {
            let create = std::mem::take(&mut plan.create);
            self.create_pods(&pods_api, job, &create, &job_ref).await
        };
        let restore_error = self
            .restore_released(&pods_api, &job_uid, pods, &plan.restore)
            .await
            .err();
        plan.status = plan
            .status
            .take()
            .and_then(|next| take_back_missed_writes(job, next, &deleted, &created));
        let pod_write_error = deleted.error.or(created.error).or(restore_error);
        let made = (created.made, deleted.made);
        let rest = self
            .write_the_rest(job, &job_ref, &pods_api, plan, made)
            .await;
        match (rest, pod_write_error) {
            (Ok(rest), pod_write_error) => Ok(Applied {
                pod_write_error: pod_write_error.or(rest.pod_write_error),
                creates_deferred: deferred,
                ..rest
            }),
            (Err(later), None) => Err(later),
            // The first failure is the one to report (a refused create is why the Job
            // is stuck); a later one (often the same refusal for the status) only logged.
            (Err(later), Some(first)) => {
                warn!(job = %format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any()),
                    error = %later, "after a failed pod write, the rest of the sync failed too");
                Err(first)
            }
        }
    }

    /// Adoption and release, the status write, the finalizer removals and the report: the
    /// part of [`Self::apply`] after the pod writes (`made`: the creates and deletes made).
    /// The creates still in the plan are those that wait for the counting (see
    /// [`Self::apply`]): made after the finalizer removals; their first failure is the
    /// returned `pod_write_error`.
    async fn write_the_rest(
        &self,
        job: &Arc<Job>,
        job_ref: &ObjectReference,
        pods_api: &Api<Pod>,
        mut plan: Plan,
        (created, deleted): (usize, usize),
    ) -> Result<Applied, ExecuteError> {
        let job_uid = job.uid().unwrap_or_default();
        if let Some(step) = self.adopt_and_release(job, pods_api, &plan).await? {
            return Ok(Applied::only(step));
        }
        let written_at = match self.write_status(job, plan.status.take()).await? {
            ControlFlow::Continue(written) => written.then(Instant::now),
            ControlFlow::Break(step) => return Ok(Applied::only(step)),
        };
        // Reached only when the status write (if any) succeeded: the uncounted lists now
        // hold every pod whose finalizer goes here.
        let finalizers_removed = self
            .remove_finalizers(pods_api, &job_uid, &plan.remove_finalizers)
            .await?;
        let late = self
            .create_pods(pods_api, job, &std::mem::take(&mut plan.create), job_ref)
            .await;
        let created = created.saturating_add(late.made);
        let done = Done {
            created,
            deleted,
            finalizers_removed,
            status_written: written_at.is_some(),
        };
        self.report(job, job_ref, plan, &done);
        // After finalizers went, the next plan moves those pods from the uncounted lists
        // into the counters; do it now rather than wait for the watch.
        let step = if done.finalizers_removed > 0 || done.deleted > 0 {
            Step::Again
        } else {
            Step::Settled
        };
        Ok(Applied {
            step,
            status_written_at: written_at,
            pod_write_error: late.error,
            creates_deferred: false,
        })
    }

    /// Writes `status` (if any) with the Job's resourceVersion, so a write based on a stale
    /// read fails with 409 instead of undoing another's. Continues with whether it wrote;
    /// breaks with the step to take when the write lost a race or the Job is gone.
    async fn write_status(
        &self,
        job: &Arc<Job>,
        status: Option<JobStatus>,
    ) -> Result<ControlFlow<Step, bool>, ExecuteError> {
        let Some(status) = status else {
            return Ok(ControlFlow::Continue(false));
        };
        let jobs_api = lenient_jobs(self.client, job);
        let mut next = (**job).clone();
        next.status = Some(status);
        match jobs_api
            .replace_status(&job.name_any(), &PostParams::default(), &Lenient(next))
            .await
        {
            Ok(Lenient(mut written)) => {
                written.managed_fields_mut().clear();
                self.expectations.status_written(
                    job.resource_version().unwrap_or_default(),
                    Arc::new(written),
                );
                Ok(ControlFlow::Continue(true))
            }
            Err(e) if code_of(&e) == Some(409) => {
                let fresh = jobs_api
                    .get_opt(&job.name_any())
                    .await
                    .map_err(ExecuteError::ReadJob)?;
                let fresh = fresh
                    .map(|j| j.0)
                    .filter(|j| j.uid() == job.uid())
                    .map(|mut j| {
                        j.managed_fields_mut().clear();
                        Arc::new(j)
                    });
                Ok(ControlFlow::Break(Step::Conflict(fresh)))
            }
            Err(e) if is_not_found(&e) => Ok(ControlFlow::Break(Step::Conflict(None))),
            Err(e) => Err(ExecuteError::Status(e)),
        }
    }

    /// Publishes the plan's events, logs its decisions and counts what it finished.
    fn report(&self, job: &Job, job_ref: &ObjectReference, plan: Plan, done: &Done) {
        for event in plan.events {
            self.publish(job_ref, event);
        }
        log_decisions(job, &plan.decisions, done);
        self.count(job, &plan.outcome, done);
    }

    fn count(&self, job: &Job, outcome: &PlanOutcome, done: &Done) {
        if done.finalizers_removed > 0 {
            self.metrics
                .terminated_pods_tracking_finalizer
                .get_or_create(&crate::edge::metrics::EventLabel {
                    event: "delete".into(),
                })
                .inc_by(done.finalizers_removed as u64);
        }
        // What finished counts once its status is written.
        if !done.status_written {
            return;
        }
        if let Some((result, reason)) = &outcome.finished {
            let mode = job
                .spec
                .as_ref()
                .and_then(|s| s.completion_mode.clone())
                .unwrap_or_else(|| "NonIndexed".into());
            self.metrics
                .jobs_finished
                .get_or_create(&crate::edge::metrics::JobFinishedLabels {
                    completion_mode: mode,
                    result: result.clone(),
                    reason: reason.clone(),
                })
                .inc();
        }
        for (result, n) in &outcome.pods_finished {
            self.metrics
                .pods_finished
                .get_or_create(&crate::edge::metrics::ResultLabel {
                    result: result.clone(),
                })
                .inc_by(u64::from(*n));
        }
        for (action, n) in &outcome.failure_policy_actions {
            self.metrics
                .pod_failures_handled_by_failure_policy
                .get_or_create(&crate::edge::metrics::ActionLabel {
                    action: action.clone(),
                })
                .inc_by(u64::from(*n));
        }
    }

    /// Deletes `delete`, each pod's tracking finalizer first. A pod gone already counts as
    /// deleted (it is no longer active); one that changed since the plan, or any failure,
    /// as missed.
    async fn delete_pods(
        &self,
        api: &Api<Pod>,
        job_uid: &str,
        pods: &[Arc<Pod>],
        delete: &[PodRef],
        job_ref: &ObjectReference,
    ) -> PodWrites {
        let by_uid: HashMap<&str, &Arc<Pod>> = pods
            .iter()
            .map(|p| (p.metadata.uid.as_deref().unwrap_or_default(), p))
            .collect();
        let results: Vec<(PodRef, Result<Deleted, ExecuteError>)> = stream::iter(delete.to_vec())
            .map(|pod: PodRef| async {
                let seen = by_uid.get(pod.uid.as_str()).copied();
                let result = self.delete_pod(api, job_uid, &pod, seen).await;
                (pod, result)
            })
            .buffer_unordered(POD_WRITE_PARALLELISM)
            .collect()
            .await;
        let mut names = Vec::new();
        let mut writes = PodWrites::default();
        for (pod, result) in results {
            let error = match result {
                Ok(Deleted::Now) => {
                    names.push(pod.name);
                    continue;
                }
                Ok(Deleted::Gone) => continue,
                // Not an error: the pod's change (often its finish) brings the next sync.
                Ok(Deleted::Changed) => {
                    debug!(pod = %pod.name, "not deleted: the pod changed since the plan");
                    None
                }
                Err(e) => Some(e),
            };
            writes.missed += 1;
            let ready = by_uid.get(pod.uid.as_str()).is_some_and(|p| is_ready(p));
            writes.missed_ready += usize::from(ready);
            if let Some(e) = error {
                self.publish_failure(job_ref, "FailedDelete", "deleting", &e);
                writes.error.get_or_insert(e);
            }
        }
        writes.made = names.len();
        self.publish_pods(job_ref, "SuccessfulDelete", "Deleted", &names);
        writes
    }

    /// Deletes one pod, its tracking finalizer first: a pod we delete is not a failure to
    /// count. An unfinished pod is released and deleted only as the plan saw it; one that
    /// succeeded in between is kept, to be counted (see [`delete_released`]).
    async fn delete_pod(
        &self,
        api: &Api<Pod>,
        job_uid: &str,
        pod: &PodRef,
        seen: Option<&Arc<Pod>>,
    ) -> Result<Deleted, ExecuteError> {
        let unfinished_version = seen
            .filter(|p| !is_finished(p))
            .and_then(|p| p.metadata.resource_version.clone());
        let mut version = unfinished_version.clone();
        let released = seen.is_some_and(|p| has_tracking_finalizer(p));
        if released {
            match release(api, &pod.name, unfinished_version.as_deref()).await {
                Ok(after) => {
                    self.expectations.finalizer_removed(job_uid, &pod.uid);
                    version = version.and(after);
                }
                Err(e) if is_not_found(&e) => return Ok(Deleted::Gone),
                Err(e) if code_of(&e) == Some(409) => return Ok(Deleted::Changed),
                Err(source) => {
                    return Err(ExecuteError::PatchPod {
                        pod: pod.name.clone(),
                        source,
                    });
                }
            }
        }
        let deleted = delete_released(api, &pod.name, &pod.uid, version.as_deref(), released)
            .await
            .map_err(|source| ExecuteError::Delete {
                pod: pod.name.clone(),
                source,
            })?;
        if deleted == Deleted::Now {
            self.expectations.deleted(job_uid, &pod.uid);
        }
        Ok(deleted)
    }

    /// Puts the tracking finalizer back on released pods that succeeded before their delete
    /// (and drops their [`RELEASED_ANNOTATION`]), each only at the version the plan saw:
    /// a pod that changed since (restored already, deleted, counted) is left alone.
    async fn restore_released(
        &self,
        api: &Api<Pod>,
        job_uid: &str,
        pods: &[Arc<Pod>],
        restore: &[PodRef],
    ) -> Result<(), ExecuteError> {
        for pod in restore {
            let Some(seen) = pods
                .iter()
                .find(|p| p.metadata.uid.as_deref() == Some(&pod.uid))
            else {
                continue;
            };
            let patch = json!({"metadata": {
                "uid": pod.uid,
                "resourceVersion": seen.metadata.resource_version,
                "finalizers": [TRACKING_FINALIZER],
                "annotations": { RELEASED_ANNOTATION: null },
            }});
            match patch_unread(api, &pod.name, patch).await {
                Ok(()) => {
                    info!(pod = %pod.name, "kept a pod that succeeded while it was being deleted: its success counts");
                    self.expectations.finalizer_restored(job_uid, &pod.uid);
                }
                // Gone, changed since the plan, or being deleted (no finalizer may be added).
                Err(e) if matches!(code_of(&e), Some(404 | 409 | 422)) => {}
                Err(source) => {
                    return Err(ExecuteError::PatchPod {
                        pod: pod.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates pods in slow-start batches of 1, 2, 4, …, as upstream does, so a Job whose
    /// pods all fail to create (quota, admission) costs one request, not hundreds. After a
    /// failed batch the rest is not tried: it counts as missed.
    /// Creates the plan's pods in slow-start batches (1, 2, 4, …) that stop at the first
    /// failure, as upstream does. Each pod is built from the template only when its turn
    /// comes, within the process-wide [`CreateBudget`].
    async fn create_pods(
        &self,
        api: &Api<Pod>,
        job: &Job,
        create: &[NewPod],
        job_ref: &ObjectReference,
    ) -> PodWrites {
        let job_uid = job.uid().unwrap_or_default();
        let template_bytes = if create.is_empty() {
            0
        } else {
            job.spec
                .as_ref()
                .and_then(|s| serde_json::to_vec(&s.template).ok())
                .map_or(0, |t| t.len())
        };
        let mut names = Vec::new();
        let mut error = None;
        let mut batch = 1;
        let mut rest = create;
        while !rest.is_empty() && error.is_none() {
            let (now, later) = rest.split_at(batch.min(rest.len()));
            rest = later;
            batch *= 2;
            let results: Vec<Result<Pod, kube::Error>> = stream::iter(now.to_vec())
                .map(|new: NewPod| async move {
                    let _share = self.create_budget.reserve(template_bytes).await;
                    create_pod(self.client, api, new.build(job)).await
                })
                .buffer_unordered(POD_WRITE_PARALLELISM)
                .collect()
                .await;
            for result in results {
                match result {
                    Ok(pod) => {
                        names.push(pod.name_any());
                        self.expectations.created(&job_uid, pod);
                    }
                    Err(e) => error = Some(ExecuteError::Create(e)),
                }
            }
        }
        self.publish_pods(job_ref, "SuccessfulCreate", "Created", &names);
        if let Some(e) = &error {
            self.publish_failure(job_ref, "FailedCreate", "creating", e);
        }
        PodWrites {
            made: names.len(),
            missed: create.len().saturating_sub(names.len()),
            missed_ready: 0,
            error,
        }
    }

    /// A Warning event for a failed pod write, with the apiserver's message, in upstream's
    /// words ("Error creating: pods \"a\" is forbidden: exceeded quota: …").
    fn publish_failure(
        &self,
        job_ref: &ObjectReference,
        reason: &str,
        verb: &str,
        e: &ExecuteError,
    ) {
        let source = match e {
            ExecuteError::Create(source)
            | ExecuteError::Delete { source, .. }
            | ExecuteError::PatchPod { source, .. }
            | ExecuteError::Status(source)
            | ExecuteError::ReadJob(source) => source,
        };
        let message = match source {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        };
        self.publish(
            job_ref,
            JobEvent {
                type_: EventType::Warning,
                reason: reason.into(),
                message: format!("Error {verb}: {message}"),
            },
        );
    }

    /// Adopts orphans and releases pods that stopped matching. Adoption re-reads the Job
    /// from the API first, so a Job being deleted never adopts (upstream does the same);
    /// `Some` is the step to take instead of going on.
    async fn adopt_and_release(
        &self,
        job: &Arc<Job>,
        api: &Api<Pod>,
        plan: &Plan,
    ) -> Result<Option<Step>, ExecuteError> {
        let job_uid = job.uid().unwrap_or_default();
        if !plan.adopt.is_empty() {
            let fresh = lenient_jobs(self.client, job)
                .get_opt(&job.name_any())
                .await
                .map_err(ExecuteError::ReadJob)?
                .map(|j| j.0);
            match fresh {
                Some(f) if f.uid() == job.uid() && f.metadata.deletion_timestamp.is_none() => {}
                Some(f) if f.uid() == job.uid() => return Ok(Some(Step::Settled)),
                _ => return Ok(Some(Step::Conflict(None))),
            }
            let owner = job
                .controller_owner_ref(&())
                .expect("a Job from the API has a name and UID");
            for pod in &plan.adopt {
                if !adopt(api, pod, &owner).await? {
                    // The pod changed since the plan judged it (adopted or relabelled by
                    // someone else) or is gone: its watch event brings the Job back.
                    debug!(job = %job.name_any(), pod = %pod.name,
                        "orphan changed before its adoption; planning again from the watch");
                    return Ok(Some(Step::Conflict(None)));
                }
            }
        }
        for pod in &plan.release {
            let patch = json!({
                "metadata": {
                    "uid": pod.uid,
                    "ownerReferences": [{"$patch": "delete", "uid": job_uid}],
                }
            });
            patch_pod(api, &pod.name, patch).await?;
        }
        Ok(None)
    }

    async fn remove_finalizers(
        &self,
        api: &Api<Pod>,
        job_uid: &str,
        pods: &[PodRef],
    ) -> Result<usize, ExecuteError> {
        let results: Vec<Result<(), ExecuteError>> = stream::iter(pods.to_vec())
            .map(|pod: PodRef| async move {
                match remove_finalizer(api, &pod.name).await {
                    Ok(()) => {}
                    // Gone already: nothing holds it back any more.
                    Err(e) if is_not_found(&e) => {}
                    Err(source) => {
                        return Err(ExecuteError::PatchPod {
                            pod: pod.name.clone(),
                            source,
                        });
                    }
                }
                self.expectations.finalizer_removed(job_uid, &pod.uid);
                Ok(())
            })
            .buffer_unordered(POD_WRITE_PARALLELISM)
            .collect()
            .await;
        let mut removed = 0;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(()) => removed += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if removed == 0 => Err(e),
            Some(e) => {
                warn!(error = %e, "some tracking finalizers could not be removed; retrying");
                Ok(removed)
            }
            None => Ok(removed),
        }
    }

    fn publish(&self, job_ref: &ObjectReference, event: JobEvent) {
        self.events.publish(job_ref, event);
    }

    /// One event for the pods one call created or deleted (upstream publishes one per
    /// pod; a burst of them costs a request each and says nothing more).
    fn publish_pods(&self, job_ref: &ObjectReference, reason: &str, verb: &str, names: &[String]) {
        if let Some(message) = pods_message(verb, names) {
            self.publish(
                job_ref,
                JobEvent {
                    type_: EventType::Normal,
                    reason: reason.into(),
                    message,
                },
            );
        }
    }
}

/// The plan's status counts its creates and deletes as made (`active`, `ready`,
/// `terminating`); takes back those that were not, as upstream's manageJob does (active
/// minus the pods not created). None when the status then says nothing new.
fn take_back_missed_writes(
    job: &Job,
    mut next: JobStatus,
    deleted: &PodWrites,
    created: &PodWrites,
) -> Option<JobStatus> {
    if deleted.missed == 0 && created.missed == 0 {
        return Some(next);
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let active = next
        .active
        .unwrap_or(0)
        .saturating_sub(count(created.missed))
        .saturating_add(count(deleted.missed));
    next.active = Some(active.max(0));
    next.ready = next
        .ready
        .map(|r| r.saturating_add(count(deleted.missed_ready)));
    next.terminating = next
        .terminating
        .map(|t| t.saturating_sub(count(deleted.missed)).max(0));
    let next = normalized(&next);
    let current = job.status.clone().unwrap_or_default();
    (next != normalized(&current)).then_some(next)
}

/// What one apply did, for its log line and metrics.
#[derive(Clone, Copy)]
struct Done {
    created: usize,
    deleted: usize,
    finalizers_removed: usize,
    status_written: bool,
}

/// One info line for a plan that decided something; counters moving (ready, active)
/// without a decision are not worth more than a debug line.
fn log_decisions(job: &Job, decisions: &[String], done: &Done) {
    let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    let Done {
        created,
        deleted,
        finalizers_removed,
        status_written,
    } = *done;
    if !decisions.is_empty() {
        info!(
            job = %key,
            created,
            deleted,
            finalizers_removed,
            status_written,
            "{}",
            decisions.join("; ")
        );
    } else if created + deleted + finalizers_removed > 0 || status_written {
        debug!(job = %key, created, deleted, finalizers_removed, status_written, "status updated");
    }
}

/// Upstream's event spam filter (client-go's `EventSourceObjectSpamFilter`): per Job and
/// reason, a burst of 25 events, then one more every 5 minutes; the rest are dropped. Without
/// it a 10,000-pod Job publishes 10,000 `SuccessfulCreate` events, each a request.
#[derive(Default)]
pub struct EventBudget {
    tokens: Mutex<HashMap<(String, String), (f64, Instant)>>,
}

const EVENT_BURST: f64 = 25.0;
const EVENT_REFILL: Duration = Duration::from_secs(300);

impl EventBudget {
    pub fn allow(&self, job_uid: &str, reason: &str) -> bool {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().expect("event budget lock");
        if tokens.len() > 10_000 {
            // Entries idle long enough to be full again say nothing a new entry would not.
            let full = EVENT_REFILL.mul_f64(EVENT_BURST);
            tokens.retain(|_, (_, last)| now.duration_since(*last) < full);
        }
        let (left, last) = tokens
            .entry((job_uid.to_string(), reason.to_string()))
            .or_insert((EVENT_BURST, now));
        let refill = now.duration_since(*last).as_secs_f64() / EVENT_REFILL.as_secs_f64();
        *left = (*left + refill).min(EVENT_BURST);
        *last = now;
        if *left >= 1.0 {
            *left -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Publishes events one at a time, in order, from one task: kube's `Recorder` folds
/// repeats of a reason into a series, and concurrent publishes of one series lose counts.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<(ObjectReference, JobEvent)>,
    budget: Arc<EventBudget>,
}

impl EventSink {
    /// The sink and the task that drains it (run it for as long as the controller runs).
    pub fn new(recorder: Recorder) -> (EventSink, impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(ObjectReference, JobEvent)>();
        let worker = async move {
            while let Some((job_ref, event)) = rx.recv().await {
                let event = Event {
                    type_: match event.type_ {
                        EventType::Normal => KubeEventType::Normal,
                        EventType::Warning => KubeEventType::Warning,
                    },
                    reason: event.reason,
                    note: Some(event.message),
                    action: "Sync".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &job_ref).await {
                    debug!(error = %e, "could not publish an event");
                }
            }
        };
        let sink = EventSink {
            tx,
            budget: Arc::default(),
        };
        (sink, worker)
    }

    pub fn publish(&self, job_ref: &ObjectReference, event: JobEvent) {
        let job_uid = job_ref.uid.as_deref().unwrap_or_default();
        if self.budget.allow(job_uid, &event.reason) {
            self.tx.send((job_ref.clone(), event)).ok();
        }
    }
}

/// Names listed in one event at most; events.k8s.io notes are limited to 1 kB.
const NAMES_PER_EVENT: usize = 10;

/// "Created pod: a", "Created 3 pods: a, b, c", "Created 40 pods: a, …, j and 30 more".
fn pods_message(verb: &str, names: &[String]) -> Option<String> {
    match names {
        [] => None,
        [one] => Some(format!("{verb} pod: {one}")),
        many => {
            let listed = many[..many.len().min(NAMES_PER_EVENT)].join(", ");
            let more = many.len().saturating_sub(NAMES_PER_EVENT);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            Some(format!("{verb} {} pods: {listed}{tail}", many.len()))
        }
    }
}

/// Removes only the tracking finalizer, leaving any others in place.
/// What asks the apiserver to answer a write with the object's metadata only.
const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// Creates a pod and returns it as stored, slimmed (see [`crate::cluster::pod_decode::slim_pod`]).
/// Only its metadata comes back (the rest is what we sent), so neither side encodes or
/// decodes the whole pod.
async fn create_pod(client: &Client, api: &Api<Pod>, mut pod: Pod) -> Result<Pod, kube::Error> {
    let url = Pod::url_path(&(), api.namespace());
    let body = serde_json::to_vec(&pod).map_err(kube::Error::SerdeError)?;
    let mut request = kube::core::Request::new(url)
        .create(&PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(METADATA_ONLY),
    );
    request.extensions_mut().insert("create");
    let stored: PartialObjectMeta<Pod> = client.request(request).await?;
    pod.metadata = stored.metadata;
    // What the apiserver gives every new pod (its QoS class is of no use here).
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        ..PodStatus::default()
    });
    crate::cluster::pod_decode::slim_pod(&mut pod);
    Ok(pod)
}

pub async fn remove_finalizer(api: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    remove_finalizer_at(api, name, None).await
}

/// Removes the tracking finalizer only while the pod is at `version` (when given): 409
/// Conflict if it changed since.
pub async fn remove_finalizer_at(
    api: &Api<Pod>,
    name: &str,
    version: Option<&str>,
) -> Result<(), kube::Error> {
    let mut patch = json!({
        "metadata": { "$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER] }
    });
    if let Some(version) = version {
        patch["metadata"]["resourceVersion"] = json!(version);
    }
    patch_unread(api, name, patch).await
}

/// Releases an excess pod for deletion: removes its tracking finalizer and marks it with
/// [`RELEASED_ANNOTATION`] in one write, only if the pod is still at `resource_version`
/// (when given): the apiserver answers 409 Conflict if the pod changed since, e.g.
/// finished. Returns the pod's version after the release.
pub async fn release(
    api: &Api<Pod>,
    name: &str,
    resource_version: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    let mut patch = json!({
        "metadata": {
            "$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER],
            "annotations": { RELEASED_ANNOTATION: "true" },
        }
    });
    if let Some(version) = resource_version {
        patch["metadata"]["resourceVersion"] = json!(version);
    }
    let request = kube::core::Request::new(api.resource_url())
        .patch_metadata(name, &PatchParams::default(), &Patch::Strategic(patch))
        .map_err(kube::Error::BuildRequest)?;
    let answer: VersionOnly = send(api, request, "patch_metadata").await?;
    Ok(answer.metadata.resource_version)
}

/// How many times [`delete_released`] reads a pod that changed and tries again.
const DELETE_ATTEMPTS: usize = 3;

/// Deletes a pod whose tracking finalizer this sync removed (`released`) or that had none
/// (maybe released by an earlier sync that could not delete it),
/// only while it is at `version` (when given; the pod's UID is always a precondition).
///
/// Between the release and the delete the pod may finish. Upstream deletes it anyway, so
/// its success goes uncounted and a replacement runs the work again. Here the delete is
/// refused (409) and the pod read again: a released pod that succeeded is left for the next
/// plan to restore and count ([`crate::plan::claim::restore_released`]); a pod still
/// running, or failed, is deleted at its new version, as upstream would.
pub async fn delete_released(
    api: &Api<Pod>,
    name: &str,
    uid: &str,
    version: Option<&str>,
    released: bool,
) -> Result<Deleted, kube::Error> {
    let mut version = version.map(str::to_string);
    for _ in 0..DELETE_ATTEMPTS {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: version.clone(),
            }),
            ..DeleteParams::default()
        };
        match delete_unread(api, name, &params).await {
            Ok(()) => return Ok(Deleted::Now),
            Err(e) if is_not_found(&e) => return Ok(Deleted::Gone),
            // Only the UID was required: another pod has the name now.
            Err(e) if code_of(&e) == Some(409) && version.is_none() => return Ok(Deleted::Gone),
            Err(e) if code_of(&e) == Some(409) => {}
            Err(e) => return Err(e),
        }
        let pods: Api<Lenient<Pod>> =
            Api::namespaced(api.clone().into_client(), &namespace_of(api));
        let Some(Lenient(now)) = pods.get_opt(name).await? else {
            return Ok(Deleted::Gone);
        };
        if now.metadata.uid.as_deref() != Some(uid) || now.metadata.deletion_timestamp.is_some() {
            return Ok(Deleted::Gone);
        }
        // Released now or by an earlier sync (marked): its success is the next plan's to
        // count.
        if is_succeeded(&now) && (released || has_annotation(&now, RELEASED_ANNOTATION)) {
            return Ok(Deleted::Changed);
        }
        version = now.metadata.resource_version;
    }
    Ok(Deleted::Changed)
}

/// Adopts an orphan: the Job's controller ownerReference and the tracking finalizer in one
/// patch, only while the pod is at the version the plan saw. An adoption judged on a stale
/// cache could otherwise land after the pod was adopted, relabelled and released again,
/// and leave a pod outside the Job's selector (and outside the pod watch) owned by it.
/// False when the pod changed (409) or is gone.
async fn adopt(api: &Api<Pod>, pod: &PodRef, owner: &OwnerReference) -> Result<bool, ExecuteError> {
    let mut patch = json!({
        "metadata": {
            "uid": pod.uid,
            "ownerReferences": [owner],
            "finalizers": [TRACKING_FINALIZER],
        }
    });
    if let Some(version) = &pod.version {
        patch["metadata"]["resourceVersion"] = json!(version);
    }
    match patch_unread(api, &pod.name, patch).await {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) || code_of(&e) == Some(409) => Ok(false),
        Err(source) => Err(ExecuteError::PatchPod {
            pod: pod.name.clone(),
            source,
        }),
    }
}

async fn patch_pod(
    api: &Api<Pod>,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), ExecuteError> {
    match patch_unread(api, name, patch).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) || code_of(&e) == Some(409) => Ok(()),
        Err(source) => Err(ExecuteError::PatchPod {
            pod: name.to_string(),
            source,
        }),
    }
}

/// What [`Executor::delete_pod`] did to one pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    /// This call deleted it.
    Now,
    /// It was gone already (no longer active either way).
    Gone,
    /// Left alone: it changed since the plan saw it (the plan is redone from the change).
    Changed,
}

/// A write's answer read for its resourceVersion alone (nothing else is decoded, so no
/// time in it can fail the write: see [`send_unread`]).
#[derive(serde::Deserialize)]
struct VersionOnly {
    metadata: VersionOnlyMeta,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionOnlyMeta {
    resource_version: Option<String>,
}

/// A strategic merge patch of a pod, answered with the pod's metadata only (the apiserver
/// need not encode, nor we read, the whole pod for each of the Job's pods). The answer is
/// not decoded at all: see [`send_unread`].
async fn patch_unread(
    api: &Api<Pod>,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), kube::Error> {
    let request = kube::core::Request::new(api.resource_url())
        .patch_metadata(name, &PatchParams::default(), &Patch::Strategic(patch))
        .map_err(kube::Error::BuildRequest)?;
    send_unread(api, request, "patch_metadata").await
}

/// Deletes a pod; the answer (the pod, now terminating) is not decoded: see [`send_unread`].
async fn delete_unread(
    api: &Api<Pod>,
    name: &str,
    params: &DeleteParams,
) -> Result<(), kube::Error> {
    let request = kube::core::Request::new(api.resource_url())
        .delete(name, params)
        .map_err(kube::Error::BuildRequest)?;
    send_unread(api, request, "delete").await
}

/// Sends a pod write whose answer is of no use, and takes its success from the status
/// code alone. The answer is still read as JSON, but into nothing: a pod can hold a time
/// the apiserver accepts and k8s-openapi's `Time` cannot (the last hours of year 9999, see
/// [`crate::cluster::lenient_time`]), and decoding it would fail a write that was made.
async fn send_unread(
    api: &Api<Pod>,
    request: http::Request<Vec<u8>>,
    verb: &'static str,
) -> Result<(), kube::Error> {
    send::<serde::de::IgnoredAny>(api, request, verb)
        .await
        .map(|_| ())
}

/// Sends a pod write labelled `verb` for the request metrics, reading its answer as `T`.
async fn send<T: serde::de::DeserializeOwned>(
    api: &Api<Pod>,
    mut request: http::Request<Vec<u8>>,
    verb: &'static str,
) -> Result<T, kube::Error> {
    request.extensions_mut().insert(verb);
    api.clone().into_client().request::<T>(request).await
}

fn namespace_of(api: &Api<Pod>) -> String {
    api.namespace().unwrap_or_default().to_string()
}

/// The Jobs of `job`'s namespace, read with their times read leniently (see
/// [`Lenient`]): another writer may have put a time of year 9999's last day in a status.
fn lenient_jobs(client: &Client, job: &Job) -> Api<Lenient<Job>> {
    Api::namespaced(client.clone(), &job.namespace().unwrap_or_default())
}

/// How long to wait before retrying a Job whose sync failed `failures` times in a row:
/// 1 s doubling to 1 min, as upstream's per-Job rate limiter does.
pub fn error_backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.min(6);
    Duration::from_secs(secs.min(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod the apiserver holds and k8s-openapi's `Time` cannot: its deletionTimestamp
    /// and its container's finishedAt lie on the last day of year 9999.
    const LAST_DAY_POD: &str = r#"{"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                     "creationTimestamp": "2026-11-27T04:00:00Z",
                     "deletionTimestamp": "9999-12-31T23:59:59Z"},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "main",
            "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "finishedAt": "9999-12-31T23:59:59Z"}}}]}}"#;

    /// What the apiserver of [`answering`] was asked: method, path and query, Accept
    /// header; and the bodies.
    type Asked = Arc<Mutex<(Vec<String>, Vec<serde_json::Value>)>>;

    /// A client whose apiserver answers every request 200 with `answer`, and what it was
    /// asked.
    fn answering(answer: &'static str) -> (Client, Asked) {
        let asked = Asked::default();
        let log = asked.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let accept = request.headers().get(http::header::ACCEPT);
            let accept = accept.and_then(|v| v.to_str().ok()).unwrap_or_default();
            let line = format!("{} {} {accept}", request.method(), request.uri());
            let log = log.clone();
            async move {
                let body = request.into_body().collect_bytes().await.unwrap();
                let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let mut log = log.lock().unwrap();
                log.0.push(line);
                log.1.push(body);
                let answer = kube::client::Body::from(answer.as_bytes().to_vec());
                Ok::<_, std::convert::Infallible>(http::Response::new(answer))
            }
        });
        (Client::new(service, "ns"), asked)
    }

    #[tokio::test]
    async fn pod_writes_succeed_whatever_the_pod_in_the_answer_holds() {
        assert!(serde_json::from_str::<Pod>(LAST_DAY_POD).is_err());
        assert!(serde_json::from_str::<PartialObjectMeta<Pod>>(LAST_DAY_POD).is_err());
        let (client, asked) = answering(LAST_DAY_POD);
        let api: Api<Pod> = Api::namespaced(client, "ns");
        remove_finalizer(&api, "p").await.unwrap();
        let orphan = PodRef {
            name: "p".into(),
            uid: "u-1".into(),
            version: Some("41".into()),
        };
        let owner = OwnerReference {
            controller: Some(true),
            name: "j".into(),
            uid: "j-1".into(),
            ..OwnerReference::default()
        };
        assert!(adopt(&api, &orphan, &owner).await.unwrap());
        delete_unread(&api, "p", &DeleteParams::default())
            .await
            .unwrap();
        let (asked, bodies) = &*asked.lock().unwrap();
        assert_eq!(asked.len(), 3, "{asked:?}");
        // The adoption holds only for the pod as the plan saw it.
        assert_eq!(bodies[1]["metadata"]["resourceVersion"], "41");
        assert_eq!(bodies[1]["metadata"]["uid"], "u-1");
        assert_eq!(bodies[1]["metadata"]["ownerReferences"][0]["uid"], "j-1");
        for patch in &asked[..2] {
            assert!(
                patch.starts_with("PATCH /api/v1/namespaces/ns/pods/p?")
                    && patch.ends_with(METADATA_ONLY),
                "{patch}"
            );
        }
        assert!(
            asked[2].starts_with("DELETE /api/v1/namespaces/ns/pods/p?"),
            "{}",
            asked[2]
        );
    }

    #[tokio::test]
    async fn a_pod_write_the_apiserver_refused_still_fails() {
        let refused = r#"{"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "message": "pods \"p\" not found", "reason": "NotFound", "code": 404}"#;
        let service = tower::service_fn(move |_: http::Request<kube::client::Body>| {
            let mut answer =
                http::Response::new(kube::client::Body::from(refused.as_bytes().to_vec()));
            *answer.status_mut() = http::StatusCode::NOT_FOUND;
            async move { Ok::<_, std::convert::Infallible>(answer) }
        });
        let api: Api<Pod> = Api::namespaced(Client::new(service, "ns"), "ns");
        let error = remove_finalizer(&api, "p").await.unwrap_err();
        assert_eq!(code_of(&error), Some(404));
        let error = delete_unread(&api, "p", &DeleteParams::default())
            .await
            .unwrap_err();
        assert!(is_not_found(&error));
    }

    #[test]
    fn one_event_names_the_pods_of_a_call() {
        let names: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
        assert_eq!(pods_message("Created", &[]), None);
        assert_eq!(
            pods_message("Created", &names[..1]).as_deref(),
            Some("Created pod: p0")
        );
        assert_eq!(
            pods_message("Deleted", &names[..3]).as_deref(),
            Some("Deleted 3 pods: p0, p1, p2")
        );
        assert_eq!(
            pods_message("Created", &names).as_deref(),
            Some("Created 12 pods: p0, p1, p2, p3, p4, p5, p6, p7, p8, p9 and 2 more")
        );
    }

    fn missed(n: usize, ready: usize) -> PodWrites {
        PodWrites {
            missed: n,
            missed_ready: ready,
            ..PodWrites::default()
        }
    }

    fn job_with(status: JobStatus) -> Job {
        Job {
            status: Some(status),
            ..Job::default()
        }
    }

    #[test]
    fn pods_not_created_or_deleted_are_taken_back_from_the_status() {
        let before = JobStatus {
            active: Some(2),
            succeeded: Some(1),
            ..JobStatus::default()
        };
        // Planned: 3 more pods (active 5), and the finished pod counted; 2 creates failed.
        let next = JobStatus {
            active: Some(5),
            succeeded: Some(2),
            ready: Some(0),
            terminating: Some(0),
            ..JobStatus::default()
        };
        let written = take_back_missed_writes(
            &job_with(before.clone()),
            next.clone(),
            &missed(0, 0),
            &missed(2, 0),
        )
        .expect("the count still changes");
        assert_eq!((written.active, written.succeeded), (Some(3), Some(2)));
        // Planned: delete 2 (one ready) of 4; both deletes failed.
        let next = JobStatus {
            active: Some(2),
            ready: Some(1),
            terminating: Some(2),
            ..JobStatus::default()
        };
        let written =
            take_back_missed_writes(&job_with(before), next, &missed(2, 1), &missed(0, 0))
                .expect("active changes");
        assert_eq!(
            (written.active, written.ready, written.terminating),
            (Some(4), Some(2), Some(0))
        );
    }

    #[test]
    fn a_status_that_only_counted_missed_creates_is_not_written() {
        let before = JobStatus {
            active: Some(2),
            ready: Some(0),
            terminating: Some(0),
            ..JobStatus::default()
        };
        let next = JobStatus {
            active: Some(4),
            ..before.clone()
        };
        assert_eq!(
            take_back_missed_writes(&job_with(before), next, &missed(0, 0), &missed(2, 0)),
            None
        );
    }

    #[test]
    fn taking_back_never_goes_below_zero_or_overflows() {
        let next = JobStatus {
            active: Some(1),
            ready: Some(i32::MAX),
            terminating: Some(1),
            ..JobStatus::default()
        };
        let none = missed(0, 0);
        let all = missed(usize::MAX, usize::MAX);
        let written = take_back_missed_writes(&Job::default(), next.clone(), &none, &all)
            .expect("a new status");
        assert_eq!(written.active, None, "0, normalized away");
        let written =
            take_back_missed_writes(&Job::default(), next, &all, &none).expect("a new status");
        assert_eq!(
            (written.active, written.ready, written.terminating),
            (Some(i32::MAX), Some(i32::MAX), Some(0))
        );
    }

    #[test]
    fn events_per_job_and_reason_stop_after_a_burst_of_25() {
        let budget = EventBudget::default();
        let allowed = (0..100)
            .filter(|_| budget.allow("job-a", "SuccessfulCreate"))
            .count();
        assert_eq!(allowed, 25);
        assert!(
            budget.allow("job-a", "Completed"),
            "another reason has its own budget"
        );
        assert!(
            budget.allow("job-b", "SuccessfulCreate"),
            "another Job has its own budget"
        );
    }
}
