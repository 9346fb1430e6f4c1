//! Runs every workload through every side, one cluster per client limit, and measures.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinSet;
use tracing::info;

use crate::Args;
use crate::ceiling::Ceiling;
use crate::cluster::{Cluster, Jobkeeper, Limit, Settings};
use crate::procfs::{self, PeakSampler};
use crate::slim::SlimPod;
use crate::watch::{Injection, JobRecord, Recorder, State};
use crate::workload::{CEILING_MANAGER, Workload};

pub const JOBKEEPER_MANAGER: &str = "jobkeeper.dev/job-controller";
/// How long creating or deleting the foreign pods may take.
const FOREIGN_WAIT: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub limit: String,
    pub workload: Workload,
    pub side: String,
    pub namespace: String,
    /// The window whose audit events count for this run.
    pub start_wall: String,
    pub end_wall: String,
    pub timed_out: bool,
    pub loadavg_before: String,
    pub wall_s: f64,
    pub jobs_complete: u32,
    pub jobs_failed: u32,
    pub pods_succeeded: u64,
    pub pods_failed: u64,
    pub pods_seen: u64,
    /// Pod terminal phase seen → Job counters counting it.
    pub pod_latency_ms: Vec<f64>,
    /// Last pod terminal → Complete condition seen, per Job.
    pub complete_latency_ms: Vec<f64>,
    /// (seconds since the first create, pods counted as succeeded in Job statuses).
    pub completions: Vec<(f64, u64)>,
    pub controller_cpu_s: Option<f64>,
    pub controller_peak_rss: Option<u64>,
    pub apiserver_cpu_s: Option<f64>,
    pub etcd_cpu_s: Option<f64>,
    pub max_status_bytes: usize,
    pub max_object_bytes: usize,
    /// The longest time, over the run's Jobs, that a Job was unfinished while its counted
    /// pods (succeeded + failed) did not grow; None for the ceiling, which counts once.
    #[serde(default)]
    pub longest_stall_s: Option<f64>,
    /// Requests by the side's identity in the run's namespace: "verb resource" → count.
    pub api: BTreeMap<String, u64>,
    /// Of those, answered with an error: "verb resource code" → count.
    pub api_errors: BTreeMap<String, u64>,
    /// Cluster-scope requests (lists, watches) by the side's identity during the run.
    pub api_cluster: BTreeMap<String, u64>,
}

impl RunResult {
    /// Which run this is: client limit, workload and side (one result each).
    fn is(&self, limit: &str, workload: &str, side: &str) -> bool {
        self.limit == limit && self.workload.name == workload && self.side == side
    }
}

pub async fn all(
    args: &Args,
    workloads: &[Workload],
    raw: &Path,
) -> anyhow::Result<Vec<RunResult>> {
    let bin = match &args.jobkeeper_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no folder")?
            .join("jobkeeper"),
    };
    if args.sides.iter().any(|s| s == "jobkeeper") && !bin.exists() {
        bail!(
            "{} is missing: cargo build --release --bin jobkeeper",
            bin.display()
        );
    }
    for side in &args.sides {
        if !["kcm", "jobkeeper", "ceiling"].contains(&side.as_str()) {
            bail!("unknown side {side:?} (kcm, jobkeeper, ceiling)");
        }
    }
    let mut results = if args.resume { load(raw)? } else { Vec::new() };
    for limit in &args.limits {
        let limit = Limit::parse(limit)?;
        let done = |w: &Workload, side: &str| {
            results
                .iter()
                .any(|r: &RunResult| r.is(&limit.label(), &w.name, side))
        };
        if workloads.iter().all(|w| {
            !w.runs_at(f64::from(limit.qps)) || args.sides.iter().all(|side| done(w, side))
        }) {
            info!(limit = %limit.label(), "every run of this limit is done already");
            continue;
        }
        let dir = PathBuf::from(format!(".bench-cluster-{}", limit.slug()));
        let mut these = Vec::new();
        {
            let cluster = Cluster::up(
                &dir,
                &Settings {
                    limit,
                    controllers: &args.kcm_controllers,
                    pod_start_ms: args.pod_start_ms,
                    pod_run_ms: args.pod_run_ms,
                },
            )
            .await?;
            let jobkeeper = if args.sides.iter().any(|s| s == "jobkeeper") {
                Some(
                    Jobkeeper::start(
                        &bin,
                        &cluster,
                        limit,
                        &raw.join(format!("jobkeeper-{}.log", limit.slug())),
                    )
                    .await?,
                )
            } else {
                None
            };
            for w in workloads {
                let sides: Vec<&str> = args
                    .sides
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !done(w, s))
                    .collect();
                if sides.is_empty() {
                    continue;
                }
                if !w.runs_at(f64::from(limit.qps)) {
                    info!(limit = %limit.label(), workload = %w.name, min_qps = w.min_qps, "not run at this limit");
                    continue;
                }
                let controller = jobkeeper.as_ref().map(|j| j.pid);
                let on = On {
                    cluster: &cluster,
                    limit,
                    jobkeeper: controller,
                };
                these.extend(run_workload(&on, w, &sides, args, raw).await?);
            }
            if let Some(j) = jobkeeper {
                j.stop().await;
            }
            let kcm_log = cluster.dir.join("logs/kube-controller-manager.log");
            let _ = std::fs::copy(kcm_log, raw.join(format!("kcm-{}.log", limit.slug())));
            // The cluster goes down here, which flushes the audit log.
        }
        crate::audit::attribute(&dir.join("audit.log"), &mut these)?;
        results.extend(these);
        save(raw, &results)?;
    }
    Ok(results)
}

/// Where a workload runs: the cluster of one client limit and its jobkeeper, if any.
struct On<'a> {
    cluster: &'a Cluster,
    limit: Limit,
    jobkeeper: Option<u32>,
}

/// Runs one workload through `sides`, with its foreign pods around it if it has any;
/// saves every run as it finishes.
async fn run_workload(
    on: &On<'_>,
    w: &Workload,
    sides: &[&str],
    args: &Args,
    raw: &Path,
) -> anyhow::Result<Vec<RunResult>> {
    let (cluster, limit) = (on.cluster, on.limit);
    let foreign = w.foreign_pods > 0;
    if foreign {
        crate::foreign::create(&cluster.admin, w.foreign_pods, FOREIGN_WAIT).await?;
    }
    let mut runs = Vec::new();
    for &side in sides {
        let controller = match side {
            "kcm" => Some(cluster.pid("kube-controller-manager")?),
            "jobkeeper" => on.jobkeeper,
            _ => None,
        };
        let r = run_one(cluster, limit, w, side, controller, args).await?;
        info!(
            limit = %limit.label(), workload = %w.name, side = %side,
            wall_s = format!("{:.1}", r.wall_s), timed_out = r.timed_out,
            "run finished"
        );
        std::fs::write(
            raw.join(format!("run-{}-{}-{}.json", limit.slug(), w.name, side)),
            serde_json::to_vec(&r)?,
        )?;
        runs.push(r);
    }
    if foreign {
        crate::foreign::delete(&cluster.admin, FOREIGN_WAIT).await?;
    }
    Ok(runs)
}

/// The runs measured so far (OUT/raw/results.json), none if there is no such file yet.
pub fn load(raw: &Path) -> anyhow::Result<Vec<RunResult>> {
    let path = raw.join("results.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(raw: &Path, results: &[RunResult]) -> anyhow::Result<()> {
    std::fs::write(
        raw.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    Ok(())
}

/// Adds the saved runs of `--limits` that results.json lacks, with their API requests
/// from the audit log still in the limit's cluster folder (see `--recover`).
pub fn recover(args: &Args, raw: &Path) -> anyhow::Result<Vec<RunResult>> {
    let mut results = load(raw)?;
    for limit in &args.limits {
        let limit = Limit::parse(limit)?;
        let prefix = format!("run-{}-", limit.slug());
        let mut these = Vec::new();
        for entry in std::fs::read_dir(raw)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !(name.starts_with(&prefix) && name.ends_with(".json")) {
                continue;
            }
            let run: RunResult = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("reading {}", path.display()))?;
            let known = results
                .iter()
                .any(|r| r.is(&run.limit, &run.workload.name, &run.side));
            if !known {
                these.push(run);
            }
        }
        let audit = PathBuf::from(format!(".bench-cluster-{}", limit.slug())).join("audit.log");
        crate::audit::attribute(&audit, &mut these)?;
        info!(limit = %limit.label(), runs = these.len(), "recovered");
        results.extend(these);
    }
    save(raw, &results)?;
    Ok(results)
}

pub async fn prepare_namespace(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    match namespaces.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    // Created here rather than waited for, so pod admission never races the
    // serviceaccount controller.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match sas.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run_one(
    cluster: &Cluster,
    limit: Limit,
    w: &Workload,
    side: &str,
    controller: Option<u32>,
    args: &Args,
) -> anyhow::Result<RunResult> {
    let ns = format!("{}-{side}", w.name);
    let admin = cluster.admin.clone();
    prepare_namespace(&admin, &ns).await?;
    let injection = (side != "ceiling" && w.fail_per_job > 0).then_some(Injection {
        per_job: w.fail_per_job,
    });
    let rec = Recorder::start(admin.clone(), &ns, injection).await;
    let meters = Meters::start(cluster, controller);
    let loadavg_before = loadavg();
    info!(limit = %limit.label(), workload = %w.name, side, load = %loadavg_before, "run starting");

    let start_wall = Timestamp::now();
    let t0 = rec.now_ms();
    let deadline = Instant::now() + w.timeout(args.timeout_s);
    let writers = create_jobs(cluster, &ns, w, side).await?;
    let waited = wait_for_jobs(&rec, writers, deadline, w.jobs).await?;
    let usage = meters.finish();
    // Let trailing writes (events, the last finalizer patches) land inside the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end_wall = Timestamp::now();

    rec.stop();
    let state = std::mem::take(&mut *rec.state.lock().expect("state lock"));
    let tally = Tally::of(&state, side, t0, waited.end_ms);
    let result = RunResult {
        limit: limit.label(),
        workload: w.clone(),
        side: side.into(),
        namespace: ns.clone(),
        start_wall: start_wall.to_string(),
        end_wall: end_wall.to_string(),
        timed_out: waited.timed_out,
        loadavg_before,
        wall_s: (waited.finish_ms(side, tally.last_finished_ms) - t0) / 1000.0,
        jobs_complete: tally.jobs_complete,
        jobs_failed: tally.jobs_failed,
        pods_succeeded: tally.pods_succeeded,
        pods_failed: tally.pods_failed,
        pods_seen: state.pods_seen,
        pod_latency_ms: tally.pod_latency_ms,
        complete_latency_ms: tally.complete_latency_ms,
        completions: tally.completions,
        controller_cpu_s: usage.controller_cpu_s,
        controller_peak_rss: usage.controller_peak_rss,
        apiserver_cpu_s: usage.apiserver_cpu_s,
        etcd_cpu_s: usage.etcd_cpu_s,
        max_status_bytes: tally.max_status_bytes,
        max_object_bytes: tally.max_object_bytes,
        longest_stall_s: tally.longest_stall_s,
        api: BTreeMap::new(),
        api_errors: BTreeMap::new(),
        api_cluster: BTreeMap::new(),
    };
    cleanup_retrying(&admin, &ns).await;
    Ok(result)
}

/// CPU time of the controller, kube-apiserver and etcd, and the controller's peak RSS,
/// from the start of a run to its end.
struct Meters {
    controller: Option<u32>,
    apiserver: Option<u32>,
    etcd: Option<u32>,
    cpu_before: [Option<f64>; 3],
    sampler: Option<PeakSampler>,
}

/// What the processes used during a run.
struct Usage {
    controller_cpu_s: Option<f64>,
    controller_peak_rss: Option<u64>,
    apiserver_cpu_s: Option<f64>,
    etcd_cpu_s: Option<f64>,
}

impl Meters {
    fn start(cluster: &Cluster, controller: Option<u32>) -> Meters {
        let mut meters = Meters {
            controller,
            apiserver: cluster.pid("kube-apiserver").ok(),
            etcd: cluster.pid("etcd").ok(),
            cpu_before: [None; 3],
            sampler: None,
        };
        meters.cpu_before = meters.cpu_now();
        meters.sampler = controller.map(PeakSampler::start);
        meters
    }

    fn cpu_now(&self) -> [Option<f64>; 3] {
        [self.controller, self.apiserver, self.etcd].map(|pid| pid.and_then(procfs::cpu_seconds))
    }

    fn finish(self) -> Usage {
        let cpu_after = self.cpu_now();
        let controller_peak_rss = self.sampler.map(PeakSampler::finish);
        let delta = |i: usize| self.cpu_before[i].zip(cpu_after[i]).map(|(a, b)| b - a);
        Usage {
            controller_cpu_s: delta(0),
            controller_peak_rss,
            apiserver_cpu_s: delta(1),
            etcd_cpu_s: delta(2),
        }
    }
}

/// Creates the workload's Jobs, at its rate or all at once. On the ceiling's side a writer
/// per Job takes it to Complete; the returned set holds those writers.
async fn create_jobs(
    cluster: &Cluster,
    ns: &str,
    w: &Workload,
    side: &str,
) -> anyhow::Result<JoinSet<anyhow::Result<()>>> {
    let jobs_api: Api<Job> = Api::namespaced(cluster.admin.clone(), ns);
    let managed_by = match side {
        "kcm" => None,
        "jobkeeper" => Some(JOBKEEPER_MANAGER),
        _ => Some(CEILING_MANAGER),
    };
    let ceiling = match side {
        "ceiling" => Some(Ceiling::start(cluster.ceiling.clone(), w.clone(), ns).await?),
        _ => None,
    };
    let mut writers = JoinSet::new();
    let create = |i: u32| {
        let jobs_api = jobs_api.clone();
        let job = w.job(i, managed_by);
        async move {
            jobs_api
                .create(&PostParams::default(), &job)
                .await
                .with_context(|| format!("creating Job {}", job.name_any()))
        }
    };
    match w.create_rate {
        Some(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for i in 0..w.jobs {
                tick.tick().await;
                let job = create(i).await?;
                if let Some(c) = &ceiling {
                    writers.spawn(c.clone().run_job(job));
                }
            }
        }
        None => {
            let mut created = stream::iter(0..w.jobs).map(create).buffer_unordered(32);
            while let Some(job) = created.next().await {
                let job = job?;
                if let Some(c) = &ceiling {
                    writers.spawn(c.clone().run_job(job));
                }
            }
        }
    }
    Ok(writers)
}

/// When a run's waiting ended, on the watcher's clock.
struct Waited {
    writers_done_ms: f64,
    timed_out: bool,
    end_ms: f64,
}

impl Waited {
    /// When the run counts as finished: its last Job (for the ceiling, also its last
    /// writer), or the deadline.
    fn finish_ms(&self, side: &str, last_finished_ms: f64) -> f64 {
        if self.timed_out {
            self.end_ms
        } else if side == "ceiling" {
            last_finished_ms.max(self.writers_done_ms)
        } else {
            last_finished_ms
        }
    }
}

/// Waits, until the deadline, for the ceiling's writers and then for every Job to finish.
async fn wait_for_jobs(
    rec: &Recorder,
    mut writers: JoinSet<anyhow::Result<()>>,
    deadline: Instant,
    jobs: u32,
) -> anyhow::Result<Waited> {
    while let Some(done) = tokio::time::timeout_at(deadline.into(), writers.join_next())
        .await
        .ok()
        .flatten()
    {
        done??;
    }
    let writers_done_ms = rec.now_ms();
    let mut finished = rec.finished.subscribe();
    let timed_out = tokio::time::timeout_at(deadline.into(), finished.wait_for(|n| *n >= jobs))
        .await
        .is_err();
    Ok(Waited {
        writers_done_ms,
        timed_out,
        end_ms: rec.now_ms(),
    })
}

/// What the watcher saw of a run's Jobs and pods, as the figures of its result.
struct Tally {
    /// When the last Job finished (Complete or Failed), or t0 if none did.
    last_finished_ms: f64,
    jobs_complete: u32,
    jobs_failed: u32,
    pods_succeeded: u64,
    pods_failed: u64,
    pod_latency_ms: Vec<f64>,
    complete_latency_ms: Vec<f64>,
    completions: Vec<(f64, u64)>,
    max_status_bytes: usize,
    max_object_bytes: usize,
    longest_stall_s: Option<f64>,
}

impl Tally {
    fn of(state: &State, side: &str, t0: f64, end_ms: f64) -> Tally {
        let jobs = || state.jobs.values();
        let (pod_latency_ms, complete_latency_ms) = if side == "ceiling" {
            (Vec::new(), Vec::new())
        } else {
            latencies(state)
        };
        let longest_stall_s = (side != "ceiling").then(|| {
            jobs()
                .map(|j| longest_stall_ms(j, end_ms) / 1000.0)
                .fold(0.0, f64::max)
        });
        let final_counts = jobs().filter_map(|j| j.counted.last());
        let (pods_succeeded, pods_failed) = final_counts
            .fold((0u64, 0u64), |(s, f), &(_, a, b)| {
                (s + u64::from(a), f + u64::from(b))
            });
        Tally {
            last_finished_ms: jobs()
                .filter_map(|j| j.complete_ms.or(j.failed_ms))
                .fold(t0, f64::max),
            jobs_complete: jobs().filter(|j| j.complete_ms.is_some()).count() as u32,
            jobs_failed: jobs().filter(|j| j.failed_ms.is_some()).count() as u32,
            pods_succeeded,
            pods_failed,
            pod_latency_ms,
            complete_latency_ms,
            completions: completions(state, t0),
            max_status_bytes: jobs().map(|j| j.max_status_bytes).max().unwrap_or(0),
            max_object_bytes: jobs().map(|j| j.max_object_bytes).max().unwrap_or(0),
            longest_stall_s,
        }
    }
}

/// The longest time a Job was unfinished while its counted pods (succeeded + failed) did
/// not grow: the largest gap between its creation, each increase of the count and its
/// finish (Complete or Failed), or `end_ms` if it never finished.
fn longest_stall_ms(job: &JobRecord, end_ms: f64) -> f64 {
    let finish = job.complete_ms.or(job.failed_ms).unwrap_or(end_ms);
    let mut last = job.created_ms;
    let mut counted = 0;
    let mut longest: f64 = 0.0;
    for &(at, s, f) in job.counted.iter().take_while(|&&(at, _, _)| at <= finish) {
        if s + f > counted {
            longest = longest.max(at - last);
            last = at;
            counted = s + f;
        }
    }
    longest.max(finish - last)
}

/// Pod done → counted for every pod, and last pod → Complete for every Job.
fn latencies(state: &State) -> (Vec<f64>, Vec<f64>) {
    let mut terminal: HashMap<&str, Vec<f64>> = HashMap::new();
    for p in state.pods.values() {
        if let Some(t) = p.terminal_ms {
            terminal.entry(p.job.as_str()).or_default().push(t);
        }
    }
    let mut pod_latency = Vec::new();
    let mut complete_latency = Vec::new();
    for (name, job) in &state.jobs {
        let Some(terminal) = terminal.get_mut(name.as_str()) else {
            continue;
        };
        terminal.sort_by(f64::total_cmp);
        pod_latency.extend(counted_latencies(terminal, &job.counted));
        if let (Some(done), Some(last)) = (job.complete_ms, terminal.last()) {
            complete_latency.push((done - last).max(0.0));
        }
    }
    (pod_latency, complete_latency)
}

/// The k-th pod to finish (`terminal` sorted) is counted when the counters first reach k:
/// one pass over both, as the first status counting k is the first whose running maximum
/// of `succeeded + failed` exceeds k.
fn counted_latencies(terminal: &[f64], counted: &[(f64, u32, u32)]) -> Vec<f64> {
    let mut out = Vec::with_capacity(terminal.len());
    let mut next = 0;
    let mut reached = 0usize;
    for (k, t) in terminal.iter().enumerate() {
        while reached <= k && next < counted.len() {
            let (_, s, f) = counted[next];
            reached = reached.max((s + f) as usize);
            next += 1;
        }
        if reached > k {
            let (at, _, _) = counted[next - 1];
            out.push((at - t).max(0.0));
        }
    }
    out
}

/// (seconds since t0, pods counted as succeeded in all Job statuses) at every increase.
fn completions(state: &State, t0: f64) -> Vec<(f64, u64)> {
    let mut increments = Vec::new();
    for job in state.jobs.values() {
        let mut previous = 0u32;
        for &(at, s, _) in &job.counted {
            if s > previous {
                increments.push((at, u64::from(s - previous)));
            }
            previous = s;
        }
    }
    increments.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0;
    increments
        .into_iter()
        .map(|(at, n)| {
            total += n;
            ((at - t0) / 1000.0, total)
        })
        .collect()
}

/// Cleans the run's namespace up, trying again a few times. A loaded apiserver may time
/// out a 100,000-pod delete; the measured run is never lost for it (the next run has a
/// namespace of its own).
async fn cleanup_retrying(admin: &kube::Client, ns: &str) {
    let mut attempt = 0;
    while let Err(e) = cleanup(admin, ns).await {
        attempt += 1;
        if attempt == 5 {
            tracing::warn!(namespace = %ns, error = %e, "could not clean the run's namespace up; going on");
            break;
        }
        tracing::warn!(namespace = %ns, error = %e, attempt, "cleaning up failed; retrying");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// How long the pods of a run may take to go: the 100,000 of indexed-huge take about
/// 10 min on 2 cores.
const CLEANUP_WAIT: Duration = Duration::from_secs(1800);

/// Deletes the run's Jobs and pods and waits until the pods are gone, so the next run
/// starts from empty caches and an apiserver that is not busy deleting.
async fn cleanup(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let slim: Api<SlimPod> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    // A run that timed out may leave pods holding the tracking finalizer.
    let holding: Vec<String> = crate::slim::list_paged(&slim, ListParams::default())
        .await?
        .into_iter()
        .filter(|p| !p.finalizers().is_empty())
        .map(|p| p.name_any())
        .collect();
    stream::iter(holding)
        .map(|name| {
            let pods = pods.clone();
            async move { (crate::slim::remove_finalizer(&pods, &name).await, name) }
        })
        .buffer_unordered(32)
        .for_each(|(removed, name)| async move {
            if let Err(e) = removed {
                tracing::warn!(pod = %name, error = %e, "could not remove a finalizer; the pod stays");
            }
        })
        .await;
    jobs.delete_collection(&DeleteParams::background(), &ListParams::default())
        .await?;
    crate::slim::delete_all(&slim, CLEANUP_WAIT).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::PodRecord;

    /// The watcher's state for Jobs whose pods finished at the given times.
    fn state_with(jobs: &[(&str, &[f64], JobRecord)]) -> State {
        let mut state = State::default();
        for (name, terminal, record) in jobs {
            for (i, t) in terminal.iter().enumerate() {
                state.pods.insert(
                    format!("{name}-{i}"),
                    PodRecord {
                        job: name.to_string(),
                        terminal_ms: Some(*t),
                        failed: false,
                    },
                );
            }
            state.jobs.insert(name.to_string(), record.clone());
        }
        state
    }

    #[test]
    fn kth_pod_to_finish_is_counted_when_the_counters_first_reach_k() {
        let record = JobRecord {
            counted: vec![(0.0, 0, 0), (130.0, 1, 0), (170.0, 2, 1)],
            complete_ms: Some(200.0),
            ..JobRecord::default()
        };
        let state = state_with(&[("a", &[150.0, 100.0, 160.0], record)]);
        let (pod_latency, complete_latency) = latencies(&state);
        assert_eq!(pod_latency, vec![30.0, 20.0, 10.0]);
        assert_eq!(complete_latency, vec![40.0]);
    }

    #[test]
    fn completions_add_up_every_jobs_succeeded_increases_in_time_order() {
        let a = JobRecord {
            counted: vec![(1000.0, 1, 0), (3000.0, 1, 1), (4000.0, 3, 1)],
            ..JobRecord::default()
        };
        let b = JobRecord {
            counted: vec![(2000.0, 2, 0)],
            ..JobRecord::default()
        };
        let state = state_with(&[("a", &[], a), ("b", &[], b)]);
        assert_eq!(
            completions(&state, 500.0),
            vec![(0.5, 1), (1.5, 3), (3.5, 5)]
        );
    }

    #[test]
    fn ceiling_runs_have_no_latencies_and_finish_with_their_last_writer() {
        let record = JobRecord {
            counted: vec![(130.0, 1, 0)],
            complete_ms: Some(140.0),
            ..JobRecord::default()
        };
        let state = state_with(&[("a", &[100.0], record)]);
        let tally = Tally::of(&state, "ceiling", 0.0, 190.0);
        assert_eq!(tally.longest_stall_s, None);
        assert!(tally.pod_latency_ms.is_empty() && tally.complete_latency_ms.is_empty());
        assert_eq!((tally.jobs_complete, tally.pods_succeeded), (1, 1));
        let waited = Waited {
            writers_done_ms: 180.0,
            timed_out: false,
            end_ms: 190.0,
        };
        assert_eq!(waited.finish_ms("ceiling", tally.last_finished_ms), 180.0);
        assert_eq!(waited.finish_ms("jobkeeper", tally.last_finished_ms), 140.0);
        let timed_out = Waited {
            timed_out: true,
            ..waited
        };
        assert_eq!(
            timed_out.finish_ms("jobkeeper", tally.last_finished_ms),
            190.0
        );
    }

    #[test]
    fn counted_latencies_match_the_first_status_whose_running_maximum_reaches_k() {
        // The count dips (a stale write) and comes back: pod 2 is counted by the first
        // status that reached 3, not by the later one.
        let counted = [(10.0, 1, 0), (20.0, 3, 0), (30.0, 2, 0), (40.0, 4, 0)];
        assert_eq!(
            counted_latencies(&[1.0, 2.0, 3.0, 4.0, 5.0], &counted),
            vec![9.0, 18.0, 17.0, 36.0]
        );
        assert!(counted_latencies(&[1.0], &[]).is_empty());
    }

    #[test]
    fn the_longest_stall_is_the_widest_gap_between_creation_increases_and_the_finish() {
        let job = JobRecord {
            created_ms: 1000.0,
            // 1000 → 3000 (2 s), no increase at 4000 and 9000, 3000 → 20000 (17 s).
            counted: vec![
                (1000.0, 0, 0),
                (3000.0, 1, 0),
                (4000.0, 1, 0),
                (9000.0, 1, 0),
                (20000.0, 1, 1),
                (21000.0, 2, 1),
            ],
            complete_ms: Some(21500.0),
            ..JobRecord::default()
        };
        assert_eq!(longest_stall_ms(&job, 99_000.0), 17_000.0);
    }

    #[test]
    fn an_unfinished_job_stalls_until_the_end_of_the_run() {
        let job = JobRecord {
            created_ms: 0.0,
            counted: vec![(500.0, 1, 0)],
            ..JobRecord::default()
        };
        assert_eq!(longest_stall_ms(&job, 60_500.0), 60_000.0);
        let never_counted = JobRecord::default();
        assert_eq!(longest_stall_ms(&never_counted, 5_000.0), 5_000.0);
        let state = state_with(&[("a", &[100.0], job)]);
        assert_eq!(
            Tally::of(&state, "kcm", 0.0, 60_500.0).longest_stall_s,
            Some(60.0)
        );
    }
}
