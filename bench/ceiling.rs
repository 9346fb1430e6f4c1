//! The ceiling: a writer, under its own identity, that issues only the calls one Job needs
//! (its pods' creates and finalizer patches, two status writes) as fast as the apiserver
//! takes them, while keeping the Job's rules that bound any controller: at most
//! `parallelism` pods at once, the pod failure backoff (10 s · 2^(n−1) after n failures
//! since the last success) before a failed pod is replaced. It also plays kubelet for its
//! own pods, which no node runs: after the same start and run delays as kwok's, one pod
//! status write marks a pod done (that write is the driver's, not the controller's).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::workload::{BENCH_LABEL, Workload};

const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Requests in flight at once, all Jobs together: enough to keep the apiserver busy,
/// below its --max-mutating-requests-inflight (200).
const IN_FLIGHT: usize = 128;

pub struct Ceiling {
    pub client: kube::Client,
    pub workload: Workload,
    pub pod_delay: Duration,
    permits: Semaphore,
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn failure_backoff(failures_after_last_success: u32) -> Duration {
    let secs = 10u64 << failures_after_last_success.saturating_sub(1).min(6);
    Duration::from_secs(secs.min(600))
}

impl Ceiling {
    pub fn new(client: kube::Client, workload: Workload, pod_delay: Duration) -> Arc<Ceiling> {
        Arc::new(Ceiling {
            client,
            workload,
            pod_delay,
            permits: Semaphore::new(IN_FLIGHT),
        })
    }

    fn pod(&self, job: &Job, index: u32, attempt: u32) -> Pod {
        let name = job.name_any();
        let mut annotations = serde_json::Map::new();
        if self.workload.indexed {
            annotations.insert(
                "batch.kubernetes.io/job-completion-index".into(),
                json!(index.to_string()),
            );
        }
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("{name}-{index}-{attempt}"),
                "labels": { BENCH_LABEL: self.workload.name, "job-name": name },
                "annotations": annotations,
                "finalizers": [TRACKING_FINALIZER],
                "ownerReferences": [{
                    "apiVersion": "batch/v1", "kind": "Job", "name": name,
                    "uid": job.uid().unwrap_or_default(),
                    "controller": true, "blockOwnerDeletion": true
                }]
            },
            "spec": {
                "restartPolicy": "Never",
                // No scheduler picks this name, so no node (and no kwok) touches the pod.
                "schedulerName": "jobkeeper-bench-none",
                "terminationGracePeriodSeconds": 0,
                "containers": [{ "name": "work", "image": "registry.k8s.io/pause:3.10" }]
            }
        }))
        .expect("a valid pod")
    }

    /// Creates the pod, waits as kwok would, marks it done; returns (index, failed, name).
    async fn run_pod(
        self: Arc<Self>,
        api: Api<Pod>,
        pod: Pod,
        index: u32,
        fail: bool,
        delay: Duration,
    ) -> anyhow::Result<(u32, bool, String)> {
        tokio::time::sleep(delay).await;
        let name = pod.name_any();
        {
            let _p = self.permits.acquire().await?;
            api.create(&PostParams::default(), &pod)
                .await
                .with_context(|| format!("creating pod {name}"))?;
        }
        tokio::time::sleep(self.pod_delay).await;
        let phase = if fail { "Failed" } else { "Succeeded" };
        {
            let _p = self.permits.acquire().await?;
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": phase}})),
            )
            .await
            .with_context(|| format!("marking pod {name} {phase}"))?;
        }
        Ok((index, fail, name))
    }

    async fn write_status(
        &self,
        api: &Api<Job>,
        job: &Job,
        status: serde_json::Value,
    ) -> anyhow::Result<Job> {
        let mut next = job.clone();
        next.status = Some(serde_json::from_value(status)?);
        let _p = self.permits.acquire().await?;
        api.replace_status(&job.name_any(), &PostParams::default(), &next)
            .await
            .with_context(|| format!("writing the status of {}", job.name_any()))
    }

    /// Takes one Job from created to Complete with the minimum of calls.
    pub async fn run_job(self: Arc<Self>, job: Job) -> anyhow::Result<()> {
        let ns = job.namespace().unwrap_or_default();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let start_time = now();
        let mut pods = JobPods::new(self.clone(), job, &ns);
        let parallelism = pods.start_first();
        // The final status write builds on this one's resourceVersion.
        let job = self
            .write_status(
                &jobs,
                &pods.job,
                json!({ "startTime": start_time, "active": parallelism, "ready": 0 }),
            )
            .await?;
        while pods.succeeded < self.workload.completions {
            let batch = pods.next_finished().await?;
            pods.count_and_refill(batch);
        }
        let status = self.complete_status(&start_time, pods.succeeded, pods.failed);
        self.write_status(&jobs, &job, status).await?;
        self.remove_finalizers(&pods.api, pods.names).await
    }

    /// The status of a Job whose pods all succeeded, as the job controller writes it.
    fn complete_status(&self, start_time: &str, succeeded: u32, failed: u32) -> serde_json::Value {
        let total = self.workload.completions;
        let done = now();
        let condition = |type_: &str| {
            json!({
                "type": type_, "status": "True", "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods",
                "lastProbeTime": done, "lastTransitionTime": done
            })
        };
        let mut status = json!({
            "startTime": start_time,
            "completionTime": done,
            "active": 0, "ready": 0,
            "succeeded": succeeded, "failed": failed,
            "conditions": [condition("SuccessCriteriaMet"), condition("Complete")],
        });
        if self.workload.indexed {
            status["completedIndexes"] = json!(if total == 1 {
                "0".to_string()
            } else {
                format!("0-{}", total - 1)
            });
        }
        status
    }

    /// Removes the tracking finalizer from every pod the Job had.
    async fn remove_finalizers(
        self: &Arc<Self>,
        pods: &Api<Pod>,
        names: Vec<String>,
    ) -> anyhow::Result<()> {
        let results: Vec<anyhow::Result<()>> = stream::iter(names)
            .map(|name| {
                let pods = pods.clone();
                let this = self.clone();
                async move {
                    let _p = this.permits.acquire().await?;
                    pods.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await
                    .with_context(|| format!("removing the finalizer of {name}"))?;
                    Ok(())
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// A finished pod: its completion index, whether it failed, its name.
type Finished = (u32, bool, String);

/// The pods of one Job the ceiling runs: those in flight, every one created (their
/// finalizers go at the end) and the counters that decide what to start next.
struct JobPods {
    ceiling: Arc<Ceiling>,
    /// The Job as created, owner of every pod.
    job: Job,
    api: Api<Pod>,
    running: JoinSet<anyhow::Result<Finished>>,
    names: Vec<String>,
    next_index: u32,
    succeeded: u32,
    failed: u32,
    failures_since_success: u32,
    last_success: Option<Instant>,
    attempts: HashMap<u32, u32>,
}

impl JobPods {
    fn new(ceiling: Arc<Ceiling>, job: Job, ns: &str) -> JobPods {
        JobPods {
            api: Api::namespaced(ceiling.client.clone(), ns),
            ceiling,
            job,
            running: JoinSet::new(),
            names: Vec::new(),
            next_index: 0,
            succeeded: 0,
            failed: 0,
            failures_since_success: 0,
            last_success: None,
            attempts: HashMap::new(),
        }
    }

    /// Starts the pod of `index`; its first attempt fails if the workload says so.
    fn start(&mut self, index: u32, attempt: u32, delay: Duration) {
        let fail = attempt == 0 && index < self.ceiling.workload.fail_per_job;
        let pod = self.ceiling.pod(&self.job, index, attempt);
        self.names.push(pod.name_any());
        let run = self
            .ceiling
            .clone()
            .run_pod(self.api.clone(), pod, index, fail, delay);
        self.running.spawn(run);
    }

    /// Starts the first `parallelism` indexes at once; returns how many.
    fn start_first(&mut self) -> u32 {
        let w = &self.ceiling.workload;
        let parallelism = w.parallelism.min(w.completions);
        for index in 0..parallelism {
            self.start(index, 0, Duration::ZERO);
        }
        self.next_index = parallelism;
        parallelism
    }

    /// The next pod to finish; after a failure, also those finishing with it.
    async fn next_finished(&mut self) -> anyhow::Result<Vec<Finished>> {
        let first = self
            .running
            .join_next()
            .await
            .context("no pod left to wait for")???;
        let first_failed = first.1;
        let mut batch = vec![first];
        if first_failed {
            // Gather the pods finishing with this one before deciding the backoff.
            let until = Instant::now() + Duration::from_millis(200);
            while let Ok(Some(next)) =
                tokio::time::timeout_at(until, self.running.join_next()).await
            {
                batch.push(next??);
            }
        }
        Ok(batch)
    }

    /// Counts a batch of finished pods: a failed one is replaced after the backoff, a
    /// succeeded one makes room for the next index.
    fn count_and_refill(&mut self, batch: Vec<Finished>) {
        let now = Instant::now();
        if batch.iter().any(|(_, failed, _)| !failed) {
            self.last_success = Some(now);
            self.failures_since_success = 0;
        }
        for (index, pod_failed, _) in batch {
            if pod_failed {
                self.failed += 1;
                // Upstream counts only failures that finished after the last success,
                // at the one-second precision of pod finish times.
                if self
                    .last_success
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    self.failures_since_success += 1;
                }
                let attempt = self.attempts.entry(index).or_default();
                *attempt += 1;
                let attempt = *attempt;
                let delay = if self.failures_since_success == 0 {
                    Duration::ZERO
                } else {
                    failure_backoff(self.failures_since_success)
                };
                self.start(index, attempt, delay);
            } else {
                self.succeeded += 1;
                if self.next_index < self.ceiling.workload.completions {
                    self.start(self.next_index, 0, Duration::ZERO);
                    self.next_index += 1;
                }
            }
        }
    }
}
