//! Watches the run's Jobs and pods from start to end and keeps what the checks need: the
//! highest counters every Job's status ever showed, every pod ever seen and how it ended,
//! and any moment when a Job had more live pods than it may (two for one index, or more
//! than its parallelism).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// One pod, as far as the watch saw it.
#[derive(Debug, Clone, Default)]
pub struct PodSeen {
    pub job: String,
    pub index: Option<String>,
    pub ever_succeeded: bool,
    pub ever_failed: bool,
    /// Seen with a deletionTimestamp before it finished (counted as failed by the rules).
    pub ever_deleted_unfinished: bool,
    /// Right now: neither finished nor being deleted.
    pub live: bool,
    pub running: bool,
}

/// One Job, over the whole run.
#[derive(Debug, Clone, Default)]
pub struct JobSeen {
    pub max_succeeded: i32,
    pub max_failed: i32,
    pub max_parallelism: i32,
    pub last: Option<Job>,
}

#[derive(Debug, Default)]
pub struct Observed {
    /// Every pod ever seen, by uid.
    pub pods: HashMap<String, PodSeen>,
    /// Pods in the cluster now, by uid.
    current: HashSet<String>,
    relist: Option<HashSet<String>>,
    pub jobs: HashMap<String, JobSeen>,
    /// Moments a Job had more live pods than allowed, described.
    pub crowding: Vec<String>,
}

#[derive(Clone)]
pub struct Observer {
    pub state: Arc<Mutex<Observed>>,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

impl Observer {
    pub fn start(client: kube::Client, ns: &str) -> Observer {
        let state: Arc<Mutex<Observed>> = Arc::default();
        let jobs = tokio::spawn(watch_jobs(
            Api::namespaced(client.clone(), ns),
            state.clone(),
        ));
        let pods = tokio::spawn(watch_pods(Api::namespaced(client, ns), state.clone()));
        Observer {
            state,
            tasks: Arc::new(vec![jobs, pods]),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&Observed) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Pods of `job` running now.
    pub fn running(&self, job: &str) -> usize {
        self.with(|o| {
            o.current
                .iter()
                .filter_map(|uid| o.pods.get(uid))
                .filter(|p| p.job == job && p.running && p.live)
                .count()
        })
    }

    /// Raises the parallelism `job` may run at before the driver sets it, so pods the
    /// controller creates for it are not taken for crowding when the pod watch runs ahead.
    pub fn allow_parallelism(&self, job: &str, parallelism: i32) {
        let mut o = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = o.jobs.entry(job.to_string()).or_default();
        entry.max_parallelism = entry.max_parallelism.max(parallelism);
    }

    /// The Job as last seen.
    pub fn job(&self, name: &str) -> Option<Job> {
        self.with(|o| o.jobs.get(name).and_then(|j| j.last.clone()))
    }

    pub fn stop(&self) {
        for t in self.tasks.iter() {
            t.abort();
        }
    }
}

async fn watch_jobs(api: Api<Job>, state: Arc<Mutex<Observed>>) {
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(event) = event else { continue };
        let mut o = state.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Apply(job) | Event::InitApply(job) => o.saw_job(job),
            Event::Delete(job) => {
                if let Some(j) = o.jobs.get_mut(&job.name_any()) {
                    j.last = None;
                }
            }
            Event::Init | Event::InitDone => {}
        }
    }
}

async fn watch_pods(api: Api<Pod>, state: Arc<Mutex<Observed>>) {
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(event) = event else { continue };
        let mut o = state.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Apply(pod) => o.saw_pod(&pod),
            Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (o.relist.as_mut(), pod.uid()) {
                    seen.insert(uid);
                }
                o.saw_pod(&pod);
            }
            Event::Delete(pod) => o.pod_gone(&pod),
            Event::Init => o.relist = Some(HashSet::new()),
            Event::InitDone => {
                if let Some(seen) = o.relist.take() {
                    o.current.retain(|uid| seen.contains(uid));
                }
                o.check_all_crowding();
            }
        }
    }
}

impl Observed {
    fn saw_job(&mut self, job: Job) {
        let entry = self.jobs.entry(job.name_any()).or_default();
        let status = job.status.clone().unwrap_or_default();
        entry.max_succeeded = entry.max_succeeded.max(status.succeeded.unwrap_or(0));
        entry.max_failed = entry.max_failed.max(status.failed.unwrap_or(0));
        let parallelism = job.spec.as_ref().and_then(|s| s.parallelism).unwrap_or(1);
        entry.max_parallelism = entry.max_parallelism.max(parallelism);
        entry.last = Some(job);
    }

    fn saw_pod(&mut self, pod: &Pod) {
        let Some(uid) = pod.uid() else { return };
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let finished = phase == "Succeeded" || phase == "Failed";
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let seen = self.pods.entry(uid.clone()).or_default();
        if seen.job.is_empty() {
            seen.job = job_of(pod).unwrap_or_default();
            seen.index = pod
                .annotations()
                .get("batch.kubernetes.io/job-completion-index")
                .cloned();
        }
        seen.ever_succeeded |= phase == "Succeeded";
        seen.ever_failed |= phase == "Failed";
        seen.ever_deleted_unfinished |= deleting && !finished;
        seen.live = !finished && !deleting;
        seen.running = phase == "Running";
        let job = seen.job.clone();
        self.current.insert(uid);
        // While a relist runs, `current` mixes pods gone meanwhile with new ones; the
        // check waits for InitDone.
        if !job.is_empty() && self.relist.is_none() {
            self.check_crowding(&job);
        }
    }

    fn pod_gone(&mut self, pod: &Pod) {
        if let Some(uid) = pod.uid() {
            self.current.remove(&uid);
            if let Some(seen) = self.pods.get_mut(&uid) {
                seen.live = false;
                seen.running = false;
            }
        }
    }

    fn check_all_crowding(&mut self) {
        let jobs: HashSet<String> = self
            .current
            .iter()
            .filter_map(|uid| self.pods.get(uid))
            .filter(|p| p.live && !p.job.is_empty())
            .map(|p| p.job.clone())
            .collect();
        for job in jobs {
            self.check_crowding(&job);
        }
    }

    /// Records a moment when `job` has two live pods for one index or more live pods than
    /// its highest parallelism so far.
    fn check_crowding(&mut self, job: &str) {
        let live: Vec<&PodSeen> = self
            .current
            .iter()
            .filter_map(|uid| self.pods.get(uid))
            .filter(|p| p.job == job && p.live)
            .collect();
        let mut indexes = HashSet::new();
        for p in &live {
            if let Some(ix) = &p.index
                && !indexes.insert(ix.clone())
            {
                self.crowding
                    .push(format!("{job}: two live pods for index {ix}"));
                return;
            }
        }
        let limit = self.jobs.get(job).map_or(i32::MAX, |j| j.max_parallelism);
        if i32::try_from(live.len()).unwrap_or(i32::MAX) > limit {
            self.crowding.push(format!(
                "{job}: {} live pods, parallelism at most {limit}",
                live.len()
            ));
        }
    }
}

/// The Job a pod belongs to: its controller, else (orphaned) its job-name label.
pub fn job_of(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Job")
        .map(|o| o.name.clone())
        .or_else(|| pod.labels().get("batch.kubernetes.io/job-name").cloned())
}
