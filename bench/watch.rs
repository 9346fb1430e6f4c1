//! One watcher per run on the run's namespace, the same for every side: it stamps each pod's
//! terminal phase and each Job status change with the time the event arrived, and injects
//! the workload's failures (an exit-code annotation on the first pods of a Job, before kwok
//! starts them, so kwok's fail stage picks them up). Pods are decoded slim (`SlimPod`):
//! only what the records need, so 100,000 pods cost the bench little.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use crate::slim::SlimPod;
use crate::workload::EXIT_CODE_ANNOTATION;

#[derive(Debug, Default, Clone)]
pub struct PodRecord {
    pub job: String,
    pub terminal_ms: Option<f64>,
    pub failed: bool,
}

#[derive(Debug, Default, Clone)]
pub struct JobRecord {
    /// When the Job was first seen.
    pub created_ms: f64,
    /// (ms, succeeded, failed) at every change of the counters.
    pub counted: Vec<(f64, u32, u32)>,
    pub complete_ms: Option<f64>,
    pub failed_ms: Option<f64>,
    pub max_status_bytes: usize,
    pub max_object_bytes: usize,
}

#[derive(Debug, Default)]
pub struct State {
    pub pods: HashMap<String, PodRecord>,
    pub jobs: HashMap<String, JobRecord>,
    /// Pods chosen to fail, per Job.
    pub injected: HashMap<String, u32>,
    pub pods_seen: u64,
}

#[derive(Clone)]
pub struct Recorder {
    pub start: Instant,
    pub state: Arc<Mutex<State>>,
    /// Jobs finished (Complete or Failed) so far.
    pub finished: watch::Sender<u32>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

pub struct Injection {
    pub per_job: u32,
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

impl Recorder {
    /// Starts watching `ns`; resolves once both watches listed.
    pub async fn start(client: kube::Client, ns: &str, injection: Option<Injection>) -> Recorder {
        let rec = Recorder {
            start: Instant::now(),
            state: Arc::default(),
            finished: watch::channel(0).0,
            tasks: Arc::default(),
        };
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(2);

        let pods: Api<SlimPod> = Api::namespaced(client.clone(), ns);
        let r = rec.clone();
        let ready = ready_tx.clone();
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let pod_task = tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::InitDone) => {
                        ready.send(()).await.ok();
                    }
                    Ok(Event::Apply(pod)) | Ok(Event::InitApply(pod)) => {
                        r.on_pod(&pod, injection.as_ref(), &pods_api)
                    }
                    _ => {}
                }
            }
        });
        let jobs: Api<Job> = Api::namespaced(client, ns);
        let r = rec.clone();
        let job_task = tokio::spawn(async move {
            let mut events = watcher(jobs, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::InitDone) => {
                        ready_tx.send(()).await.ok();
                    }
                    Ok(Event::Apply(job)) | Ok(Event::InitApply(job)) => r.on_job(&job),
                    _ => {}
                }
            }
        });
        rec.tasks
            .lock()
            .expect("tasks lock")
            .extend([pod_task, job_task]);
        ready_rx.recv().await;
        ready_rx.recv().await;
        rec
    }

    /// Stops both watches.
    pub fn stop(&self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }

    /// Milliseconds since the watches started, the clock of every record.
    pub fn now_ms(&self) -> f64 {
        ms_since(self.start)
    }

    fn on_pod(&self, pod: &SlimPod, injection: Option<&Injection>, api: &Api<Pod>) {
        let now = ms_since(self.start);
        let Some(job) = pod.job().map(str::to_string) else {
            return;
        };
        let uid = pod.uid().unwrap_or_default();
        let phase = pod.phase.as_deref();
        let mut state = self.state.lock().expect("state lock");
        let first = !state.pods.contains_key(&uid);
        if first {
            state.pods_seen += 1;
            if let Some(inj) = injection {
                let n = state.injected.entry(job.clone()).or_default();
                if *n < inj.per_job && matches!(phase, None | Some("Pending")) {
                    *n += 1;
                    let api = api.clone();
                    let name = pod.name_any();
                    tokio::spawn(async move {
                        let patch =
                            json!({"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "1"}}});
                        if let Err(e) = api
                            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                        {
                            tracing::warn!(pod = %name, error = %e, "could not inject a failure");
                        }
                    });
                }
            }
        }
        let record = state.pods.entry(uid).or_insert_with(|| PodRecord {
            job,
            ..Default::default()
        });
        if record.terminal_ms.is_none()
            && let Some(failed) = pod.terminal()
        {
            record.terminal_ms = Some(now);
            record.failed = failed;
        }
    }

    fn on_job(&self, job: &Job) {
        let now = ms_since(self.start);
        let status = job.status.clone().unwrap_or_default();
        let succeeded = status.succeeded.unwrap_or(0) as u32;
        let failed = status.failed.unwrap_or(0) as u32;
        let condition = |t: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == t && c.status == "True")
        };
        let (complete, job_failed) = (condition("Complete"), condition("Failed"));
        let status_bytes = serde_json::to_vec(&status).map(|v| v.len()).unwrap_or(0);
        let object_bytes = serde_json::to_vec(job).map(|v| v.len()).unwrap_or(0);
        let mut state = self.state.lock().expect("state lock");
        let record = state
            .jobs
            .entry(job.name_any())
            .or_insert_with(|| JobRecord {
                created_ms: now,
                ..JobRecord::default()
            });
        let last = record.counted.last().map(|&(_, s, f)| (s, f));
        if last != Some((succeeded, failed)) {
            record.counted.push((now, succeeded, failed));
        }
        record.max_status_bytes = record.max_status_bytes.max(status_bytes);
        record.max_object_bytes = record.max_object_bytes.max(object_bytes);
        let mut newly_finished = false;
        if complete && record.complete_ms.is_none() {
            record.complete_ms = Some(now);
            newly_finished = record.failed_ms.is_none();
        }
        if job_failed && record.failed_ms.is_none() {
            record.failed_ms = Some(now);
            newly_finished = record.complete_ms.is_none();
        }
        if newly_finished {
            self.finished.send_modify(|n| *n += 1);
        }
    }
}
