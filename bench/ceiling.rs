//! The ceiling: a writer, under its own identity, that issues only the calls one Job needs
//! (its pods' creates and finalizer patches, two status writes) as fast as the apiserver
//! takes them, while keeping the Job's rules that bound any controller: at most
//! `parallelism` pods at once, the pod failure backoff (10 s · 2^(n−1) after n failures
//! since the last success) before a failed pod is replaced. It also plays kubelet for its
//! own pods, which no node runs: after the same start and run delays as kwok's, one pod
//! status write marks a pod done (that write is the driver's, not the controller's).

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
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let w = &self.workload;
        let total = w.completions;
        let parallelism = w.parallelism.min(total);
        let start_time = now();

        let mut running = JoinSet::new();
        let mut names = Vec::new();
        let mut spawn = |index: u32, attempt: u32, delay: Duration, running: &mut JoinSet<_>| {
            let fail = attempt == 0 && index < w.fail_per_job;
            let pod = self.pod(&job, index, attempt);
            names.push(pod.name_any());
            running.spawn(self.clone().run_pod(pods.clone(), pod, index, fail, delay));
        };
        for index in 0..parallelism {
            spawn(index, 0, Duration::ZERO, &mut running);
        }
        let mut next_index = parallelism;
        let job = self
            .write_status(
                &jobs,
                &job,
                json!({ "startTime": start_time, "active": parallelism, "ready": 0 }),
            )
            .await?;

        let (mut succeeded, mut failed, mut failures_since_success) = (0u32, 0u32, 0u32);
        let mut last_success: Option<tokio::time::Instant> = None;
        let mut attempts = std::collections::HashMap::<u32, u32>::new();
        while succeeded < total {
            let first = running
                .join_next()
                .await
                .context("no pod left to wait for")???;
            let first_failed = first.1;
            let mut batch = vec![first];
            if first_failed {
                // Gather the pods finishing with this one before deciding the backoff.
                let until = tokio::time::Instant::now() + Duration::from_millis(200);
                while let Ok(Some(next)) = tokio::time::timeout_at(until, running.join_next()).await
                {
                    batch.push(next??);
                }
            }
            let now = tokio::time::Instant::now();
            if batch.iter().any(|(_, failed, _)| !failed) {
                last_success = Some(now);
                failures_since_success = 0;
            }
            for (index, pod_failed, _) in batch {
                if pod_failed {
                    failed += 1;
                    // Upstream counts only failures that finished after the last success,
                    // at the one-second precision of pod finish times.
                    if last_success.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        failures_since_success += 1;
                    }
                    let attempt = attempts.entry(index).or_default();
                    *attempt += 1;
                    let delay = if failures_since_success == 0 {
                        Duration::ZERO
                    } else {
                        failure_backoff(failures_since_success)
                    };
                    spawn(index, *attempt, delay, &mut running);
                } else {
                    succeeded += 1;
                    if next_index < total {
                        spawn(next_index, 0, Duration::ZERO, &mut running);
                        next_index += 1;
                    }
                }
            }
        }
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
        if w.indexed {
            status["completedIndexes"] = json!(if total == 1 {
                "0".to_string()
            } else {
                format!("0-{}", total - 1)
            });
        }
        self.write_status(&jobs, &job, status).await?;

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
