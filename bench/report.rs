//! The Markdown report: one table per client limit with both controllers, their ratio and
//! the ceiling; the API breakdown; the goals, checked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Args;
use crate::run::RunResult;

pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

impl RunResult {
    pub fn jobs_per_s(&self) -> f64 {
        f64::from(self.jobs_complete) / self.wall_s.max(1e-9)
    }
    pub fn pods_per_s(&self) -> f64 {
        self.pods_succeeded as f64 / self.wall_s.max(1e-9)
    }
    pub fn requests(&self, with_events: bool) -> u64 {
        self.api
            .iter()
            .filter(|(k, _)| with_events || !k.ends_with(" events"))
            .map(|(_, n)| n)
            .sum()
    }
    pub fn requests_per_job(&self, with_events: bool) -> f64 {
        self.requests(with_events) as f64 / f64::from(self.workload.jobs)
    }
    pub fn minimum_per_job(&self) -> f64 {
        f64::from(self.workload.minimum_requests_per_job())
    }
}

fn limits_of(results: &[RunResult]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in results {
        if !v.contains(&r.limit) {
            v.push(r.limit.clone());
        }
    }
    v
}

fn workloads_of(results: &[RunResult]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in results {
        if !v.contains(&r.workload.name) {
            v.push(r.workload.name.clone());
        }
    }
    v
}

pub fn find<'a>(
    results: &'a [RunResult],
    limit: &str,
    workload: &str,
    side: &str,
) -> Option<&'a RunResult> {
    results
        .iter()
        .find(|r| r.limit == limit && r.workload.name == workload && r.side == side)
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

fn mib(b: Option<u64>) -> Option<f64> {
    b.map(|b| b as f64 / (1024.0 * 1024.0))
}

type Metric = (&'static str, usize, fn(&RunResult) -> Option<f64>);

const METRICS: &[Metric] = &[
    ("wall time to all Complete (s)", 1, |r| Some(r.wall_s)),
    ("Jobs completed / s", 1, |r| Some(r.jobs_per_s())),
    ("pods completed / s", 1, |r| Some(r.pods_per_s())),
    ("pod done → counted p50 (ms)", 0, |r| {
        percentile(&r.pod_latency_ms, 50.0)
    }),
    ("pod done → counted p90 (ms)", 0, |r| {
        percentile(&r.pod_latency_ms, 90.0)
    }),
    ("pod done → counted p99 (ms)", 0, |r| {
        percentile(&r.pod_latency_ms, 99.0)
    }),
    ("pod done → counted max (ms)", 0, |r| {
        percentile(&r.pod_latency_ms, 100.0)
    }),
    ("last pod → Complete p50 (ms)", 0, |r| {
        percentile(&r.complete_latency_ms, 50.0)
    }),
    ("last pod → Complete p90 (ms)", 0, |r| {
        percentile(&r.complete_latency_ms, 90.0)
    }),
    ("last pod → Complete p99 (ms)", 0, |r| {
        percentile(&r.complete_latency_ms, 99.0)
    }),
    ("last pod → Complete max (ms)", 0, |r| {
        percentile(&r.complete_latency_ms, 100.0)
    }),
    ("API requests / Job", 1, |r| Some(r.requests_per_job(true))),
    ("API requests / Job without events", 1, |r| {
        Some(r.requests_per_job(false))
    }),
    ("minimum requests / Job", 0, |r| Some(r.minimum_per_job())),
    ("controller CPU (s)", 2, |r| r.controller_cpu_s),
    ("controller peak RSS (MiB)", 1, |r| {
        mib(r.controller_peak_rss)
    }),
    ("kube-apiserver CPU (s)", 1, |r| r.apiserver_cpu_s),
    ("etcd CPU (s)", 1, |r| r.etcd_cpu_s),
    ("largest Job status (bytes)", 0, |r| {
        Some(r.max_status_bytes as f64)
    }),
    ("pods failed (counted)", 0, |r| Some(r.pods_failed as f64)),
    ("pods succeeded (counted)", 0, |r| {
        Some(r.pods_succeeded as f64)
    }),
];

/// The three runs of one client limit and workload, any of them missing.
#[derive(Clone, Copy)]
struct Sides<'a> {
    kcm: Option<&'a RunResult>,
    jobkeeper: Option<&'a RunResult>,
    ceiling: Option<&'a RunResult>,
}

impl<'a> Sides<'a> {
    fn find(results: &'a [RunResult], limit: &str, workload: &str) -> Sides<'a> {
        let get = |side| find(results, limit, workload, side);
        Sides {
            kcm: get("kcm"),
            jobkeeper: get("jobkeeper"),
            ceiling: get("ceiling"),
        }
    }

    /// The runs there are, KCM first, then jobkeeper, then the ceiling.
    fn present(&self) -> impl Iterator<Item = &'a RunResult> {
        [self.kcm, self.jobkeeper, self.ceiling]
            .into_iter()
            .flatten()
    }
}

/// The whole report: how it was made, a section per client limit, the goals.
pub fn markdown(args: &Args, results: &[RunResult]) -> String {
    let mut s = String::new();
    write_introduction(&mut s, args, results);
    for limit in limits_of(results) {
        let _ = writeln!(s, "## Client limit QPS/burst {limit}\n");
        for w in workloads_of(results) {
            let sides = Sides::find(results, &limit, &w);
            write_workload_heading(&mut s, &w, sides);
            write_metrics(&mut s, sides);
            write_api_details(&mut s, sides);
        }
        let slug = limit.replace('/', "-");
        let _ = writeln!(
            s,
            "![pod done → counted, CDF](latency-cdf-{slug}.png)\n\n![completions over time](completions-{slug}.png)\n"
        );
    }
    s += &goals(results);
    s
}

/// The title, how the runs were made, the workloads and how to read the figures.
fn write_introduction(s: &mut String, args: &Args, results: &[RunResult]) {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let _ = writeln!(s, "# jobkeeper vs the built-in job controller\n");
    let _ = writeln!(
        s,
        "Generated by `jobkeeper-bench` at commit `{}` on {} ({} CPUs). \
         One local control plane per client limit (etcd, kube-apiserver with a Metadata audit \
         log, kube-controller-manager with `--controllers {}`, kube-scheduler, kwok with one \
         fake node). Pods are bound to the fake node in the template (the scheduler is not \
         measured); kwok starts a pod after {} ms and finishes it {} ms later. Both controllers \
         run with their default sync concurrency (KCM `--concurrent-job-syncs 5`, jobkeeper \
         `--concurrency 16`) and the same `--kube-api-qps/--kube-api-burst`. Scale {}.\n",
        commit.trim(),
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.kcm_controllers,
        args.pod_start_ms,
        args.pod_run_ms,
        args.scale,
    );
    let _ = writeln!(s, "Workloads:\n");
    for w in workloads_of(results) {
        if let Some(r) = results.iter().find(|r| r.workload.name == w) {
            let _ = writeln!(s, "- **{w}**: {}", r.workload.describe());
        }
    }
    let _ = writeln!(
        s,
        "\nLatencies are watch-event arrival times at one watcher in the bench process, the \
         same for both sides: *pod done → counted* runs from a pod's terminal phase to the \
         first Job status whose `succeeded + failed` counts it (the k-th pod to finish against \
         the counters reaching k); *last pod → Complete* from a Job's last pod finishing to \
         its Complete condition. API requests come from the audit log, per identity, in the \
         run's namespace (cluster-scope lists and watches are listed separately). The ceiling \
         is a minimal writer that only makes the calls in *minimum requests / Job* (and one \
         pod status write per pod, as the kubelet would) while keeping parallelism and the \
         pod failure backoff.\n"
    );
}

/// The workload's heading with the load before each run, and the runs that timed out.
fn write_workload_heading(s: &mut String, w: &str, sides: Sides) {
    let load = sides
        .present()
        .map(|r| format!("{}: {}", r.side, r.loadavg_before))
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(s, "### {w} (load average before each run: {load})\n");
    for r in sides.present() {
        if r.timed_out {
            let _ = writeln!(
                s,
                "**{} timed out**: {} of {} Jobs finished.\n",
                r.side,
                r.jobs_complete + r.jobs_failed,
                r.workload.jobs
            );
        }
    }
}

/// Every metric for the three sides, with jobkeeper's ratio to KCM and to the ceiling.
fn write_metrics(s: &mut String, sides: Sides) {
    let _ = writeln!(
        s,
        "| metric | KCM | jobkeeper | jobkeeper / KCM | ceiling | jobkeeper / ceiling |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (name, digits, f) in METRICS {
        let (kv, jv, cv) = (
            sides.kcm.and_then(f),
            sides.jobkeeper.and_then(f),
            sides.ceiling.and_then(f),
        );
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} |",
            num(kv, *digits),
            num(jv, *digits),
            ratio(jv, kv),
            num(cv, *digits),
            ratio(jv, cv)
        );
    }
    let _ = writeln!(s);
}

/// A folded table of API requests per Job by verb and resource, and the cluster-scope
/// requests of both controllers.
fn write_api_details(s: &mut String, sides: Sides) {
    let _ = writeln!(
        s,
        "<details><summary>API requests per Job by verb and resource</summary>\n"
    );
    let mut keys: BTreeMap<&str, ()> = BTreeMap::new();
    for r in sides.present() {
        for key in r.api.keys().chain(r.api_errors.keys()) {
            keys.insert(key, ());
        }
    }
    let _ = writeln!(s, "| request | KCM | jobkeeper | ceiling |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for key in keys.keys() {
        let per_job = |r: Option<&RunResult>| {
            r.and_then(|r| {
                r.api
                    .get(*key)
                    .or_else(|| r.api_errors.get(*key))
                    .map(|n| *n as f64 / f64::from(r.workload.jobs))
            })
        };
        let label = if key.split(' ').count() > 2 {
            format!("{key} (error responses)")
        } else {
            key.to_string()
        };
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} |",
            num(per_job(sides.kcm), 2),
            num(per_job(sides.jobkeeper), 2),
            num(per_job(sides.ceiling), 2)
        );
    }
    let cluster: Vec<String> = [sides.kcm, sides.jobkeeper]
        .iter()
        .flatten()
        .map(|r| {
            format!(
                "{}: {}",
                r.side,
                r.api_cluster
                    .iter()
                    .map(|(k, n)| format!("{k} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\nCluster-scope requests during the run: {}\n\n</details>\n",
        cluster.join("; ")
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The QPS of a client limit written QPS/BURST.
fn qps_of(limit: &str) -> Option<f64> {
    limit.split('/').next().and_then(|q| q.parse().ok())
}

/// The goals, checked against the figures above.
pub fn goals(results: &[RunResult]) -> String {
    let mut s =
        String::from("## Goals\n\n| goal | where | figure | verdict |\n|---|---|---|---|\n");
    let limits = limits_of(results);
    let unthrottled = limits
        .iter()
        .max_by(|a, b| {
            qps_of(a)
                .partial_cmp(&qps_of(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .cloned()
        .unwrap_or_default();
    let controllers = both_controllers(results);
    write_throughput_goal(&mut s, &controllers);
    write_ceiling_goal(&mut s, results, &unthrottled);
    write_latency_goal(&mut s, results);
    write_requests_goal(&mut s, &controllers);
    write_memory_goal(&mut s, &controllers);
    write_indexed_goal(&mut s, results);
    s
}

/// The runs of KCM and jobkeeper on the same client limit and workload.
struct Controllers<'a> {
    limit: String,
    workload: String,
    kcm: &'a RunResult,
    jobkeeper: &'a RunResult,
}

/// Every client limit and workload that both controllers ran, in the report's order.
fn both_controllers(results: &[RunResult]) -> Vec<Controllers<'_>> {
    let mut pairs = Vec::new();
    for limit in limits_of(results) {
        for workload in workloads_of(results) {
            let sides = Sides::find(results, &limit, &workload);
            if let (Some(kcm), Some(jobkeeper)) = (sides.kcm, sides.jobkeeper) {
                pairs.push(Controllers {
                    limit: limit.clone(),
                    workload,
                    kcm,
                    jobkeeper,
                });
            }
        }
    }
    pairs
}

fn write_throughput_goal(s: &mut String, controllers: &[Controllers]) {
    for c in controllers {
        let (limit, w, k, j) = (&c.limit, &c.workload, c.kcm, c.jobkeeper);
        let r = j.pods_per_s() / k.pods_per_s();
        let _ = writeln!(
            s,
            "| throughput ≥ KCM's | {w} @ {limit} | {:.1} vs {:.1} pods/s (×{r:.2}) | {} |",
            j.pods_per_s(),
            k.pods_per_s(),
            verdict(r >= 0.999 && !j.timed_out)
        );
    }
}

/// jobkeeper against the ceiling at the highest client limit.
fn write_ceiling_goal(s: &mut String, results: &[RunResult], unthrottled: &str) {
    for w in workloads_of(results) {
        let sides = Sides::find(results, unthrottled, &w);
        let (Some(j), Some(c)) = (sides.jobkeeper, sides.ceiling) else {
            continue;
        };
        let r = j.pods_per_s() / c.pods_per_s();
        let _ = writeln!(
            s,
            "| unthrottled throughput ≥ 80% of the ceiling | {w} @ {unthrottled} | {:.1} vs {:.1} pods/s ({:.0}%) | {} |",
            j.pods_per_s(),
            c.pods_per_s(),
            r * 100.0,
            verdict(r >= 0.8)
        );
    }
}

/// jobkeeper's status latency, a goal only below saturation.
fn write_latency_goal(s: &mut String, results: &[RunResult]) {
    for limit in &limits_of(results) {
        for w in workloads_of(results) {
            let Some(j) = find(results, limit, &w, "jobkeeper") else {
                continue;
            };
            let (p50, p99) = (
                percentile(&j.pod_latency_ms, 50.0).unwrap_or(f64::NAN),
                percentile(&j.pod_latency_ms, 99.0).unwrap_or(f64::NAN),
            );
            // Below saturation: Jobs arrive more slowly than the client limit can serve
            // even their minimum requests.
            let qps = qps_of(limit).unwrap_or(f64::INFINITY);
            let unsaturated = j
                .workload
                .create_rate
                .is_some_and(|rate| rate * j.minimum_per_job() < qps);
            let below = match j.workload.create_rate {
                _ if unsaturated => " (below saturation)".to_string(),
                Some(rate) => format!(
                    " (saturated: {rate} Jobs/s × {} requests ≥ {qps} QPS)",
                    j.minimum_per_job()
                ),
                None => " (saturated: all Jobs at once)".to_string(),
            };
            let met = p50 <= 50.0 && p99 <= 250.0;
            let _ = writeln!(
                s,
                "| status latency p50 ≤ 50 ms, p99 ≤ 250 ms | {w} @ {limit}{below} | p50 {p50:.0} ms, p99 {p99:.0} ms | {} |",
                match (unsaturated, met) {
                    (true, _) => verdict(met),
                    (false, true) => "met",
                    (false, false) => "not a goal here",
                }
            );
        }
    }
}

fn write_requests_goal(s: &mut String, controllers: &[Controllers]) {
    for c in controllers {
        let (limit, w, k, j) = (&c.limit, &c.workload, c.kcm, c.jobkeeper);
        let (jr, kr, jr_no, min) = (
            j.requests_per_job(true),
            k.requests_per_job(true),
            j.requests_per_job(false),
            j.minimum_per_job(),
        );
        let _ = writeln!(
            s,
            "| API requests / Job ≤ KCM's and ≤ 1.2 × minimum | {w} @ {limit} | {jr:.1} (KCM {kr:.1}); without events {jr_no:.1} = {:.2} × minimum {min:.0} | {} |",
            jr_no / min,
            verdict(jr <= kr && jr_no <= 1.2 * min)
        );
    }
}

fn write_memory_goal(s: &mut String, controllers: &[Controllers]) {
    for c in controllers {
        let (limit, w, k, j) = (&c.limit, &c.workload, c.kcm, c.jobkeeper);
        let (Some(kr), Some(jr)) = (mib(k.controller_peak_rss), mib(j.controller_peak_rss)) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| peak RSS ≤ ⅓ of KCM's | {w} @ {limit} | {jr:.1} vs {kr:.1} MiB ({:.2}) | {} |",
            jr / kr,
            verdict(jr * 3.0 <= kr)
        );
    }
}

fn write_indexed_goal(s: &mut String, results: &[RunResult]) {
    for r in results
        .iter()
        .filter(|r| r.workload.indexed && r.side == "jobkeeper")
    {
        let _ = writeln!(
            s,
            "| Indexed Job completes, status ≪ 1.5 MiB | {} completions @ {} | {} ({} bytes largest status, {} bytes largest object) | {} |",
            r.workload.completions,
            r.limit,
            if r.jobs_complete == 1 {
                "Complete"
            } else {
                "not Complete"
            },
            r.max_status_bytes,
            r.max_object_bytes,
            verdict(r.jobs_complete == 1 && r.max_object_bytes < 1024 * 1024)
        );
    }
}

/// A short table for the README.
pub fn summary(results: &[RunResult]) -> String {
    let mut s = String::from(
        "| limit | workload | pods/s KCM | pods/s jobkeeper | pods/s ceiling | counted p50/p99 ms KCM | counted p50/p99 ms jobkeeper | req/Job KCM | req/Job jobkeeper (min) | peak RSS MiB KCM / jobkeeper |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for limit in limits_of(results) {
        for w in workloads_of(results) {
            let sides = Sides::find(results, &limit, &w);
            let (k, j, c) = (sides.kcm, sides.jobkeeper, sides.ceiling);
            let pps = |r: Option<&RunResult>| num(r.map(|r| r.pods_per_s()), 1);
            let lat = |r: Option<&RunResult>| {
                r.map(|r| {
                    format!(
                        "{} / {}",
                        num(percentile(&r.pod_latency_ms, 50.0), 0),
                        num(percentile(&r.pod_latency_ms, 99.0), 0)
                    )
                })
                .unwrap_or_else(|| "–".into())
            };
            let req = |r: Option<&RunResult>| num(r.map(|r| r.requests_per_job(true)), 1);
            let min = j.or(k).map(|r| r.minimum_per_job());
            let rss = |r: Option<&RunResult>| num(r.and_then(|r| mib(r.controller_peak_rss)), 0);
            let _ = writeln!(
                s,
                "| {limit} | {w} | {} | {} | {} | {} | {} | {} | {} ({}) | {} / {} |",
                pps(k),
                pps(j),
                pps(c),
                lat(k),
                lat(j),
                req(k),
                req(j),
                num(min, 0),
                rss(k),
                rss(j)
            );
        }
    }
    s
}
