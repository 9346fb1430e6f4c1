//! The ceiling: a writer, under its own identity, that issues only the calls one Job needs
//! (its pods' creates and finalizer patches, two status writes) as fast as the apiserver
//! takes them, while keeping the Job's rules that bound any controller: at most
//! `parallelism` pods at once, the pod failure backoff (10 s · 2^(n−1) after n failures
//! since the last success) before a failed pod is replaced. Its pods are built from the
//! Job's template like a controller's (bound to the fake node, the same labels and
//! annotations, owned by the Job), so kwok runs and finishes them with the same stages as
//! the controllers' pods; a pod chosen to fail carries the exit-code annotation from its
//! create, where the other sides get it from the bench's watcher. It learns that pods
//! finished through one pod watch for the whole run (a list, then watches), never by
//! polling a pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::slim::SlimPod;
use crate::workload::{BENCH_LABEL, EXIT_CODE_ANNOTATION, Workload};

const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Requests in flight at once, all Jobs together: enough to keep the apiserver busy,
/// below its --max-mutating-requests-inflight (200).
const IN_FLIGHT: usize = 128;

/// A pod the watch saw finish: its name and whether it failed.
type Done = (String, bool);
/// Where the watch sends each Job's finished pods, by Job name.
type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Done>>>>;

pub struct Ceiling {
    pub client: kube::Client,
    pub workload: Workload,
    permits: Semaphore,
    routes: Routes,
    watch: JoinHandle<()>,
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn failure_backoff(failures_after_last_success: u32) -> Duration {
    let secs = 10u64 << failures_after_last_success.saturating_sub(1).min(6);
    Duration::from_secs(secs.min(600))
}

/// Sends every finished pod of the workload in `ns` to its Job's route; signals `ready`
/// once the first list is in.
async fn watch_pods(
    pods: Api<SlimPod>,
    config: watcher::Config,
    routes: Routes,
    ready: mpsc::Sender<()>,
) {
    let mut events = watcher(pods, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::InitDone) => {
                ready.send(()).await.ok();
            }
            Ok(Event::Apply(pod)) | Ok(Event::InitApply(pod)) => {
                let (Some(job), Some(failed)) = (pod.job(), pod.terminal()) else {
                    continue;
                };
                let routes = routes.lock().expect("routes lock");
                if let Some(route) = routes.get(job) {
                    route.send((pod.name_any(), failed)).ok();
                }
            }
            _ => {}
        }
    }
}

impl Ceiling {
    /// Starts the run's pod watch in `ns`; resolves once it has listed.
    pub async fn start(
        client: kube::Client,
        workload: Workload,
        ns: &str,
    ) -> anyhow::Result<Arc<Ceiling>> {
        let pods: Api<SlimPod> = Api::namespaced(client.clone(), ns);
        let config = watcher::Config::default().labels(&format!("{BENCH_LABEL}={}", workload.name));
        let routes = Routes::default();
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let watch = tokio::spawn(watch_pods(pods, config, routes.clone(), ready_tx));
        let listed = tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await;
        if !matches!(listed, Ok(Some(()))) {
            watch.abort();
            anyhow::bail!("the ceiling's pod watch did not list within 60 s");
        }
        Ok(Arc::new(Ceiling {
            client,
            workload,
            permits: Semaphore::new(IN_FLIGHT),
            routes,
            watch,
        }))
    }

    /// The pod of `index`, built from the Job's template as a controller builds it.
    fn pod(&self, job: &Job, index: u32, attempt: u32, fail: bool) -> Pod {
        let name = job.name_any();
        let template = job
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut meta = template.metadata.unwrap_or_default();
        meta.name = Some(format!("{name}-{index}-{attempt}"));
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
        labels.insert("job-name".into(), name.clone());
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        if self.workload.indexed {
            annotations.insert(INDEX_ANNOTATION.into(), index.to_string());
            labels.insert(INDEX_ANNOTATION.into(), index.to_string());
        }
        if fail {
            annotations.insert(EXIT_CODE_ANNOTATION.into(), "1".into());
        }
        meta.finalizers = Some(vec![TRACKING_FINALIZER.into()]);
        meta.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name,
            uid: job.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        Pod {
            metadata: meta,
            spec: template.spec,
            status: None,
        }
    }

    /// Creates the pod after `delay` (the failure backoff); kwok runs it from there.
    async fn create_pod(
        self: Arc<Self>,
        api: Api<Pod>,
        pod: Pod,
        delay: Duration,
    ) -> anyhow::Result<()> {
        tokio::time::sleep(delay).await;
        let _p = self.permits.acquire().await?;
        api.create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {}", pod.name_any()))?;
        Ok(())
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
        let (route, finished) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .expect("routes lock")
            .insert(job.name_any(), route);
        let mut pods = JobPods::new(self.clone(), job, &ns, finished);
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
        self.routes
            .lock()
            .expect("routes lock")
            .remove(&job.name_any());
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
                    crate::slim::remove_finalizer(&pods, &name)
                        .await
                        .with_context(|| format!("removing the finalizer of {name}"))
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
    /// Creates under way (and their backoff waits); an error ends the Job's run.
    creates: JoinSet<anyhow::Result<()>>,
    /// The pods started and not yet seen finished: name → completion index.
    in_flight: HashMap<String, u32>,
    /// This Job's pods the watch saw finish (a pod may come more than once).
    finished: mpsc::UnboundedReceiver<Done>,
    names: Vec<String>,
    next_index: u32,
    succeeded: u32,
    failed: u32,
    failures_since_success: u32,
    last_success: Option<Instant>,
    attempts: HashMap<u32, u32>,
}

impl JobPods {
    fn new(
        ceiling: Arc<Ceiling>,
        job: Job,
        ns: &str,
        finished: mpsc::UnboundedReceiver<Done>,
    ) -> JobPods {
        JobPods {
            api: Api::namespaced(ceiling.client.clone(), ns),
            ceiling,
            job,
            creates: JoinSet::new(),
            in_flight: HashMap::new(),
            finished,
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
        let pod = self.ceiling.pod(&self.job, index, attempt, fail);
        let name = pod.name_any();
        self.in_flight.insert(name.clone(), index);
        self.names.push(name);
        let create = self
            .ceiling
            .clone()
            .create_pod(self.api.clone(), pod, delay);
        self.creates.spawn(create);
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

    /// The next of this Job's pods in flight to finish; fails if a create failed.
    async fn recv(&mut self) -> anyhow::Result<Finished> {
        loop {
            tokio::select! {
                Some(created) = self.creates.join_next() => created??,
                done = self.finished.recv() => {
                    let (name, failed) = done.context("the ceiling's pod watch ended")?;
                    if let Some(index) = self.in_flight.remove(&name) {
                        return Ok((index, failed, name));
                    }
                }
            }
        }
    }

    /// The next pod to finish; after a failure, also those finishing with it.
    async fn next_finished(&mut self) -> anyhow::Result<Vec<Finished>> {
        let first = self.recv().await?;
        let first_failed = first.1;
        let mut batch = vec![first];
        if first_failed {
            // Gather the pods finishing with this one before deciding the backoff.
            let until = Instant::now() + Duration::from_millis(200);
            while let Ok(next) = tokio::time::timeout_at(until, self.recv()).await {
                batch.push(next?);
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
