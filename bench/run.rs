//! Runs every workload through every side, one cluster per client limit, and measures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinSet;
use tracing::info;

use crate::Args;
use crate::ceiling::Ceiling;
use crate::cluster::{Cluster, Jobkeeper, Limit, Settings};
use crate::procfs::{self, PeakSampler};
use crate::watch::{Injection, Recorder};
use crate::workload::{CEILING_MANAGER, Workload};

pub const JOBKEEPER_MANAGER: &str = "jobkeeper.dev/job-controller";

#[derive(Debug, Clone, Serialize, Deserialize)]
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
        if workloads
            .iter()
            .all(|w| args.sides.iter().all(|side| done(w, side)))
        {
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
                for side in &args.sides {
                    if done(w, side) {
                        continue;
                    }
                    let controller = match side.as_str() {
                        "kcm" => Some(cluster.pid("kube-controller-manager")?),
                        "jobkeeper" => jobkeeper.as_ref().map(|j| j.pid),
                        _ => None,
                    };
                    let r = run_one(&cluster, limit, w, side, controller, args).await?;
                    info!(
                        limit = %limit.label(), workload = %w.name, side = %side,
                        wall_s = format!("{:.1}", r.wall_s), timed_out = r.timed_out,
                        "run finished"
                    );
                    std::fs::write(
                        raw.join(format!("run-{}-{}-{}.json", limit.slug(), w.name, side)),
                        serde_json::to_vec(&r)?,
                    )?;
                    these.push(r);
                }
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

async fn prepare_namespace(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
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
    let apiserver = cluster.pid("kube-apiserver").ok();
    let etcd = cluster.pid("etcd").ok();
    let cpu = |pid: Option<u32>| pid.and_then(procfs::cpu_seconds);
    let cpu_before = (cpu(controller), cpu(apiserver), cpu(etcd));
    let sampler = controller.map(PeakSampler::start);
    let loadavg_before = loadavg();
    info!(limit = %limit.label(), workload = %w.name, side, load = %loadavg_before, "run starting");

    let start_wall = Timestamp::now();
    let t0 = rec.now_ms();
    let jobs_api: Api<Job> = Api::namespaced(admin.clone(), &ns);
    let managed_by = match side {
        "kcm" => None,
        "jobkeeper" => Some(JOBKEEPER_MANAGER),
        _ => Some(CEILING_MANAGER),
    };
    let ceiling = (side == "ceiling").then(|| {
        Ceiling::new(
            cluster.ceiling.clone(),
            w.clone(),
            Duration::from_millis(args.pod_start_ms + args.pod_run_ms),
        )
    });
    let mut writers = JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);

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
    while let Some(done) = tokio::time::timeout_at(deadline.into(), writers.join_next())
        .await
        .ok()
        .flatten()
    {
        done??;
    }
    let writers_done_ms = rec.now_ms();
    let mut finished = rec.finished.subscribe();
    let timed_out = tokio::time::timeout_at(deadline.into(), finished.wait_for(|n| *n >= w.jobs))
        .await
        .is_err();
    let end_ms = rec.now_ms();
    let cpu_after = (cpu(controller), cpu(apiserver), cpu(etcd));
    let peak_rss = sampler.map(PeakSampler::finish);
    // Let trailing writes (events, the last finalizer patches) land inside the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end_wall = Timestamp::now();

    rec.stop();
    let state = std::mem::take(&mut *rec.state.lock().expect("state lock"));
    let last_complete = state
        .jobs
        .values()
        .filter_map(|j| j.complete_ms.or(j.failed_ms))
        .fold(t0, f64::max);
    let finish_ms = if timed_out {
        end_ms
    } else if side == "ceiling" {
        last_complete.max(writers_done_ms)
    } else {
        last_complete
    };
    let mut pod_latency = Vec::new();
    let mut complete_latency = Vec::new();
    let mut increments = Vec::new();
    for (name, job) in &state.jobs {
        let mut terminal: Vec<f64> = state
            .pods
            .values()
            .filter(|p| &p.job == name)
            .filter_map(|p| p.terminal_ms)
            .collect();
        terminal.sort_by(f64::total_cmp);
        if side != "ceiling" {
            // The k-th pod to finish is counted when the counters first reach k.
            for (k, t) in terminal.iter().enumerate() {
                if let Some(&(at, _, _)) =
                    job.counted.iter().find(|&&(_, s, f)| (s + f) as usize > k)
                {
                    pod_latency.push((at - t).max(0.0));
                }
            }
            if let (Some(done), Some(last)) = (job.complete_ms, terminal.last()) {
                complete_latency.push((done - last).max(0.0));
            }
        }
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
    let completions = increments
        .into_iter()
        .map(|(at, n)| {
            total += n;
            ((at - t0) / 1000.0, total)
        })
        .collect();
    let final_counts = state.jobs.values().filter_map(|j| j.counted.last());
    let (pods_succeeded, pods_failed) = final_counts.fold((0u64, 0u64), |(s, f), &(_, a, b)| {
        (s + u64::from(a), f + u64::from(b))
    });
    let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    let result = RunResult {
        limit: limit.label(),
        workload: w.clone(),
        side: side.into(),
        namespace: ns.clone(),
        start_wall: start_wall.to_string(),
        end_wall: end_wall.to_string(),
        timed_out,
        loadavg_before,
        wall_s: (finish_ms - t0) / 1000.0,
        jobs_complete: state
            .jobs
            .values()
            .filter(|j| j.complete_ms.is_some())
            .count() as u32,
        jobs_failed: state
            .jobs
            .values()
            .filter(|j| j.failed_ms.is_some())
            .count() as u32,
        pods_succeeded,
        pods_failed,
        pods_seen: state.pods_seen,
        pod_latency_ms: pod_latency,
        complete_latency_ms: complete_latency,
        completions,
        controller_cpu_s: delta(cpu_before.0, cpu_after.0),
        controller_peak_rss: peak_rss,
        apiserver_cpu_s: delta(cpu_before.1, cpu_after.1),
        etcd_cpu_s: delta(cpu_before.2, cpu_after.2),
        max_status_bytes: state
            .jobs
            .values()
            .map(|j| j.max_status_bytes)
            .max()
            .unwrap_or(0),
        max_object_bytes: state
            .jobs
            .values()
            .map(|j| j.max_object_bytes)
            .max()
            .unwrap_or(0),
        api: BTreeMap::new(),
        api_errors: BTreeMap::new(),
        api_cluster: BTreeMap::new(),
    };
    // A loaded apiserver may time out a 10,000-pod delete: try again, and never lose the
    // measured run for it (the next run has a namespace of its own).
    let mut attempt = 0;
    while let Err(e) = cleanup(&admin, &ns).await {
        attempt += 1;
        if attempt == 5 {
            tracing::warn!(namespace = %ns, error = %e, "could not clean the run's namespace up; going on");
            break;
        }
        tracing::warn!(namespace = %ns, error = %e, attempt, "cleaning up failed; retrying");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(result)
}

/// Deletes the run's Jobs and pods so the next run starts from empty caches.
async fn cleanup(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    // A run that timed out may leave pods holding the tracking finalizer.
    let holding: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| !p.finalizers().is_empty())
        .map(|p| p.name_any())
        .collect();
    let patched: Vec<_> = stream::iter(holding)
        .map(|name| {
            let pods = pods.clone();
            async move {
                pods.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    drop(patched);
    jobs.delete_collection(&DeleteParams::background(), &ListParams::default())
        .await?;
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete_collection(&now, &ListParams::default()).await?;
    for _ in 0..600 {
        let left = pods.list(&ListParams::default().limit(1)).await?;
        if left.items.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("pods of {ns} still there two minutes after deletion")
}
