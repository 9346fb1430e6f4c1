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
    /// Job status writes (PUTs and patches of jobs/status) per Job.
    pub fn status_writes_per_job(&self) -> f64 {
        let writes: u64 = ["update jobs/status", "patch jobs/status"]
            .iter()
            .filter_map(|k| self.api.get(*k))
            .sum();
        writes as f64 / f64::from(self.workload.jobs)
    }
    /// Whether Jobs arrive more slowly than the client limit can serve even their minimum
    /// requests (only paced workloads can be).
    pub fn below_saturation(&self) -> bool {
        let qps = qps_of(&self.limit).unwrap_or(f64::INFINITY);
        self.workload
            .create_rate
            .is_some_and(|rate| rate * self.minimum_per_job() < qps)
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
    ("Job status writes / Job", 1, |r| {
        Some(r.status_writes_per_job())
    }),
    ("longest stall (s)", 1, |r| r.longest_stall_s),
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
            if sides.present().next().is_none() {
                write_not_run(&mut s, results, &limit, &w);
                continue;
            }
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
         its Complete condition; *longest stall* is the longest time any Job of the run was \
         unfinished while its `succeeded + failed` did not grow (from its creation to its \
         finish, or to the end of a run that timed out). API requests come from the audit \
         log, per identity, in the run's namespace (cluster-scope lists and watches are listed \
         separately); *Job status writes* are its PUTs and patches of `jobs/status`.\n"
    );
    let _ = writeln!(
        s,
        "The ceiling is a minimal writer under its own identity. Its pods are built from the \
         Job's template as a controller builds them (bound to the fake node, the same labels \
         and annotations, owned by the Job, the tracking finalizer), so kwok starts, runs and \
         finishes or fails them with the same stages and delays as the controllers' pods. It \
         learns that pods finished through one pod watch for the whole run (a list and its \
         watches, in its namespace's figures) and otherwise makes only the calls in *minimum \
         requests / Job*: a create and a finalizer patch per pod, two status writes per Job, \
         keeping parallelism and the pod failure backoff. It counts pods only in its final \
         status, so it has no counted latencies and no stall figure.\n"
    );
    let _ = writeln!(
        s,
        "A workload with foreign pods runs while that many bare pods no Job owns run on the \
         fake node in a namespace of their own (created and Running before its first side, \
         deleted after its last); its peak RSS is compared with the same side's run of the \
         workload without them. Peak RSS is that of a process that ran the workloads before \
         it on the same cluster.\n"
    );
}

/// Why a workload has no runs at this limit: one that runs only at higher client limits
/// gets the least time its minimum requests alone would take at this one.
fn write_not_run(s: &mut String, results: &[RunResult], limit: &str, w: &str) {
    let _ = writeln!(s, "### {w}\n");
    let workload = results
        .iter()
        .find(|r| r.workload.name == w)
        .map(|r| &r.workload);
    match (workload, qps_of(limit)) {
        (Some(wl), Some(qps)) if !wl.runs_at(qps) => {
            let requests = f64::from(wl.jobs) * f64::from(wl.minimum_requests_per_job());
            let _ = writeln!(
                s,
                "Not run at this client limit: the workload runs only at {} QPS or more. Its \
                 minimum of {requests:.0} requests alone would take {} per side at {qps} \
                 QPS.\n",
                wl.min_qps,
                duration_text(requests / qps)
            );
        }
        _ => {
            let _ = writeln!(s, "No runs at this client limit.\n");
        }
    }
}

/// `secs` in hours, minutes or seconds, whichever reads best.
fn duration_text(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1} h", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{secs:.0} s")
    }
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

/// One row of the goals table; `met` None: the figure is shown, but it is no goal there.
#[derive(Debug)]
struct GoalRow {
    goal: String,
    place: String,
    figure: String,
    met: Option<bool>,
}

impl GoalRow {
    fn new(goal: &str, place: String, figure: String, met: Option<bool>) -> GoalRow {
        GoalRow {
            goal: goal.into(),
            place,
            figure,
            met,
        }
    }

    fn write(&self, s: &mut String) {
        let v = self.met.map_or("not a goal here", verdict);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {v} |",
            self.goal, self.place, self.figure
        );
    }
}

/// The client limit with the highest QPS: the unthrottled one.
fn unthrottled_limit(results: &[RunResult]) -> String {
    limits_of(results)
        .into_iter()
        .max_by(|a, b| {
            qps_of(a)
                .partial_cmp(&qps_of(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .unwrap_or_default()
}

/// The goals, checked against the figures above.
pub fn goals(results: &[RunResult]) -> String {
    let mut s =
        String::from("## Goals\n\n| goal | where | figure | verdict |\n|---|---|---|---|\n");
    for row in goal_rows(results) {
        row.write(&mut s);
    }
    s
}

/// Every goal row, in the table's order.
fn goal_rows(results: &[RunResult]) -> Vec<GoalRow> {
    let unthrottled = unthrottled_limit(results);
    let controllers = both_controllers(results);
    let mut rows = Vec::new();
    rows.extend(throughput_goal(&controllers, &unthrottled));
    rows.extend(ceiling_goal(results, &unthrottled));
    rows.extend(latency_goal(results));
    rows.extend(saturated_latency_goal(&controllers));
    rows.extend(requests_goal(&controllers));
    rows.extend(status_writes_goal(&controllers));
    rows.extend(memory_goal(&controllers));
    rows.extend(foreign_memory_goal(results));
    rows.extend(stall_goal(results));
    rows.extend(status_size_goal(results));
    rows.extend(indexed_goal(results));
    rows
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

/// jobkeeper's pods/s against KCM's: ≥ 1.1 × at the unthrottled limit, ≥ 1 × below it.
fn throughput_goal(controllers: &[Controllers], unthrottled: &str) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for c in controllers {
        let (limit, w, k, j) = (&c.limit, &c.workload, c.kcm, c.jobkeeper);
        let (goal, target) = if limit == unthrottled {
            ("unthrottled throughput ≥ 1.1 × KCM's", 1.1)
        } else {
            ("throughput ≥ KCM's", 1.0)
        };
        let r = j.pods_per_s() / k.pods_per_s();
        rows.push(GoalRow::new(
            goal,
            format!("{w} @ {limit}"),
            format!(
                "{:.1} vs {:.1} pods/s (×{r:.2})",
                j.pods_per_s(),
                k.pods_per_s()
            ),
            Some(r >= target - 0.001 && !j.timed_out),
        ));
    }
    rows
}

/// jobkeeper against the true ceiling at the highest client limit.
fn ceiling_goal(results: &[RunResult], unthrottled: &str) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for w in workloads_of(results) {
        let sides = Sides::find(results, unthrottled, &w);
        let (Some(j), Some(c)) = (sides.jobkeeper, sides.ceiling) else {
            continue;
        };
        let r = j.pods_per_s() / c.pods_per_s();
        rows.push(GoalRow::new(
            "unthrottled throughput ≥ 80% of the ceiling",
            format!("{w} @ {unthrottled}"),
            format!(
                "{:.1} vs {:.1} pods/s ({:.0}%)",
                j.pods_per_s(),
                c.pods_per_s(),
                r * 100.0
            ),
            Some(r >= 0.8 && !j.timed_out),
        ));
    }
    rows
}

/// How a run stands to saturation, for the latency goals' "where".
fn saturation_note(r: &RunResult) -> String {
    let qps = qps_of(&r.limit).unwrap_or(f64::INFINITY);
    match r.workload.create_rate {
        _ if r.below_saturation() => " (below saturation)".to_string(),
        Some(rate) => format!(
            " (saturated: {rate} Jobs/s × {} requests ≥ {qps} QPS)",
            r.minimum_per_job()
        ),
        None => " (saturated: all Jobs at once)".to_string(),
    }
}

/// jobkeeper's status latency, a goal only below saturation.
fn latency_goal(results: &[RunResult]) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for limit in &limits_of(results) {
        for w in workloads_of(results) {
            let Some(j) = find(results, limit, &w, "jobkeeper") else {
                continue;
            };
            let (p50, p99) = (
                percentile(&j.pod_latency_ms, 50.0).unwrap_or(f64::NAN),
                percentile(&j.pod_latency_ms, 99.0).unwrap_or(f64::NAN),
            );
            let met = p50 <= 50.0 && p99 <= 250.0;
            rows.push(GoalRow::new(
                "status latency p50 ≤ 50 ms, p99 ≤ 250 ms",
                format!("{w} @ {limit}{}", saturation_note(j)),
                format!("p50 {p50:.0} ms, p99 {p99:.0} ms"),
                // Met under saturation is still worth a "met".
                (j.below_saturation() || met).then_some(met),
            ));
        }
    }
    rows
}

/// Under saturation, jobkeeper's pod done → counted p99 against KCM's, at every limit.
fn saturated_latency_goal(controllers: &[Controllers]) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for c in controllers
        .iter()
        .filter(|c| !c.jobkeeper.below_saturation())
    {
        let p99 = |r: &RunResult| percentile(&r.pod_latency_ms, 99.0);
        let (Some(j), Some(k)) = (p99(c.jobkeeper), p99(c.kcm)) else {
            continue;
        };
        rows.push(GoalRow::new(
            "saturated pod done → counted p99 ≤ KCM's",
            format!("{} @ {}", c.workload, c.limit),
            format!("{j:.0} vs {k:.0} ms"),
            Some(j <= k),
        ));
    }
    rows
}

fn requests_goal(controllers: &[Controllers]) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for c in controllers {
        let (limit, w, k, j) = (&c.limit, &c.workload, c.kcm, c.jobkeeper);
        let (jr, kr, jr_no, min) = (
            j.requests_per_job(true),
            k.requests_per_job(true),
            j.requests_per_job(false),
            j.minimum_per_job(),
        );
        rows.push(GoalRow::new(
            "API requests / Job ≤ KCM's and ≤ 1.2 × minimum",
            format!("{w} @ {limit}"),
            format!(
                "{jr:.1} (KCM {kr:.1}); without events {jr_no:.1} = {:.2} × minimum {min:.0}",
                jr_no / min
            ),
            Some(jr <= kr && jr_no <= 1.2 * min),
        ));
    }
    rows
}

/// Job status writes per Job and requests per Job without events, both ≤ KCM's.
fn status_writes_goal(controllers: &[Controllers]) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for c in controllers {
        let (k, j) = (c.kcm, c.jobkeeper);
        let (js, ks) = (j.status_writes_per_job(), k.status_writes_per_job());
        let (jr, kr) = (j.requests_per_job(false), k.requests_per_job(false));
        rows.push(GoalRow::new(
            "status writes / Job and requests / Job without events ≤ KCM's",
            format!("{} @ {}", c.workload, c.limit),
            format!("status writes {js:.2} vs {ks:.2}; requests {jr:.1} vs {kr:.1}"),
            Some(js <= ks && jr <= kr),
        ));
    }
    rows
}

fn memory_goal(controllers: &[Controllers]) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for c in controllers {
        let (k, j) = (c.kcm, c.jobkeeper);
        let (Some(kr), Some(jr)) = (mib(k.controller_peak_rss), mib(j.controller_peak_rss)) else {
            continue;
        };
        rows.push(GoalRow::new(
            "peak RSS ≤ ⅓ of KCM's",
            format!("{} @ {}", c.workload, c.limit),
            format!("{jr:.1} vs {kr:.1} MiB ({:.2})", jr / kr),
            Some(jr * 3.0 <= kr),
        ));
    }
    rows
}

/// With foreign pods, each controller's peak RSS against its own run of the workload
/// without them: jobkeeper's ≤ 1.1 ×, KCM's beside it.
fn foreign_memory_goal(results: &[RunResult]) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for with in results
        .iter()
        .filter(|r| r.side == "jobkeeper" && r.workload.foreign_pods > 0)
    {
        let name = &with.workload.name;
        let Some(base) = name.strip_suffix("-foreign") else {
            continue;
        };
        let rss = |w: &str, side: &str| {
            find(results, &with.limit, w, side).and_then(|r| mib(r.controller_peak_rss))
        };
        let (Some(j_with), Some(j_without)) = (rss(name, "jobkeeper"), rss(base, "jobkeeper"))
        else {
            continue;
        };
        let kcm = match (rss(name, "kcm"), rss(base, "kcm")) {
            (Some(a), Some(b)) => format!("; KCM {a:.1} vs {b:.1} MiB (×{:.2})", a / b),
            _ => String::new(),
        };
        rows.push(GoalRow::new(
            "peak RSS with foreign pods ≤ 1.1 × without",
            format!("{name} vs {base} @ {}", with.limit),
            format!(
                "{} foreign pods: {j_with:.1} vs {j_without:.1} MiB (×{:.2}){kcm}",
                with.workload.foreign_pods,
                j_with / j_without
            ),
            Some(j_with <= 1.1 * j_without),
        ));
    }
    rows
}

/// The workloads whose longest stall is a goal.
const STALL_GOAL_WORKLOADS: &[&str] = &["indexed-huge"];
const STALL_GOAL_S: f64 = 30.0;

/// jobkeeper's longest stall on the huge Indexed Job, KCM's beside it.
fn stall_goal(results: &[RunResult]) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for j in results.iter().filter(|r| {
        r.side == "jobkeeper" && STALL_GOAL_WORKLOADS.contains(&r.workload.name.as_str())
    }) {
        let Some(stall) = j.longest_stall_s else {
            continue;
        };
        let kcm = find(results, &j.limit, &j.workload.name, "kcm")
            .and_then(|k| k.longest_stall_s)
            .map(|k| format!(" (KCM {k:.1} s)"))
            .unwrap_or_default();
        rows.push(GoalRow::new(
            "no stall over 30 s",
            format!("{} @ {}", j.workload.name, j.limit),
            format!("longest {stall:.1} s{kcm}"),
            Some(stall <= STALL_GOAL_S && !j.timed_out),
        ));
    }
    rows
}

const MAX_STATUS_BYTES: usize = 3 * 1024 * 1024 / 2;

/// jobkeeper's largest Job status on every Indexed run (the Job whose status grows with
/// its completions), against 1.5 MiB.
fn status_size_goal(results: &[RunResult]) -> Vec<GoalRow> {
    results
        .iter()
        .filter(|r| r.side == "jobkeeper" && r.workload.indexed)
        .map(|r| {
            GoalRow::new(
                "largest Job status ≤ 1.5 MiB",
                format!("{} @ {}", r.workload.name, r.limit),
                format!("{} bytes", r.max_status_bytes),
                Some(r.max_status_bytes <= MAX_STATUS_BYTES),
            )
        })
        .collect()
}

fn indexed_goal(results: &[RunResult]) -> Vec<GoalRow> {
    results
        .iter()
        .filter(|r| r.workload.indexed && r.side == "jobkeeper")
        .map(|r| {
            GoalRow::new(
                "Indexed Job completes, status ≪ 1.5 MiB",
                format!("{} completions @ {}", r.workload.completions, r.limit),
                format!(
                    "{} ({} bytes largest status, {} bytes largest object)",
                    if r.jobs_complete == 1 {
                        "Complete"
                    } else {
                        "not Complete"
                    },
                    r.max_status_bytes,
                    r.max_object_bytes
                ),
                Some(r.jobs_complete == 1 && r.max_object_bytes < 1024 * 1024),
            )
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;

    /// A run with the figures the goals read.
    fn run(limit: &str, workload: &str, side: &str) -> RunResult {
        RunResult {
            limit: limit.into(),
            side: side.into(),
            workload: Workload {
                name: workload.into(),
                jobs: 10,
                parallelism: 1,
                completions: 1,
                ..Workload::default()
            },
            wall_s: 10.0,
            pods_succeeded: 100,
            ..RunResult::default()
        }
    }

    fn verdicts(rows: &[GoalRow]) -> Vec<(String, Option<bool>)> {
        rows.iter().map(|r| (r.place.clone(), r.met)).collect()
    }

    #[test]
    fn throughput_needs_1_1_times_kcm_unthrottled_and_kcm_s_below() {
        let mut results = Vec::new();
        for limit in ["20/30", "500/1000"] {
            results.push(run(limit, "small", "kcm"));
            let mut j = run(limit, "small", "jobkeeper");
            j.wall_s = 10.0 / 1.05; // ×1.05 KCM's pods/s
            results.push(j);
        }
        let unthrottled = unthrottled_limit(&results);
        assert_eq!(unthrottled, "500/1000");
        let rows = throughput_goal(&both_controllers(&results), &unthrottled);
        assert_eq!(
            verdicts(&rows),
            vec![
                ("small @ 20/30".into(), Some(true)),
                ("small @ 500/1000".into(), Some(false))
            ]
        );
    }

    #[test]
    fn stall_is_a_goal_on_indexed_huge_only_and_shows_kcm_s() {
        let mut results = Vec::new();
        for (w, stall) in [("indexed", 50.0), ("indexed-huge", 29.0)] {
            let mut k = run("500/1000", w, "kcm");
            k.longest_stall_s = Some(41.5);
            let mut j = run("500/1000", w, "jobkeeper");
            j.longest_stall_s = Some(stall);
            results.extend([k, j]);
        }
        let rows = stall_goal(&results);
        assert_eq!(
            verdicts(&rows),
            vec![("indexed-huge @ 500/1000".into(), Some(true))]
        );
        assert_eq!(rows[0].figure, "longest 29.0 s (KCM 41.5 s)");
        results[3].longest_stall_s = Some(30.5);
        assert_eq!(stall_goal(&results)[0].met, Some(false));
        results[3].timed_out = true;
        results[3].longest_stall_s = Some(1.0);
        assert_eq!(stall_goal(&results)[0].met, Some(false));
    }

    #[test]
    fn foreign_memory_compares_each_side_with_its_own_run_without_them() {
        let rss = |mut r: RunResult, mib: u64| {
            r.controller_peak_rss = Some(mib << 20);
            r
        };
        let foreign = |mut r: RunResult| {
            r.workload.foreign_pods = 50_000;
            r
        };
        let mut results = vec![
            rss(run("500/1000", "small", "kcm"), 100),
            rss(run("500/1000", "small", "jobkeeper"), 40),
            rss(foreign(run("500/1000", "small-foreign", "kcm")), 300),
            rss(foreign(run("500/1000", "small-foreign", "jobkeeper")), 44),
        ];
        let rows = foreign_memory_goal(&results);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].met, Some(true));
        assert!(rows[0].figure.contains("KCM 300.0 vs 100.0 MiB (×3.00)"));
        results[3] = rss(foreign(run("500/1000", "small-foreign", "jobkeeper")), 45);
        assert_eq!(foreign_memory_goal(&results)[0].met, Some(false));
        // Without the run to compare with, no row.
        results.remove(1);
        assert!(foreign_memory_goal(&results).is_empty());
    }

    #[test]
    fn status_writes_and_requests_without_events_must_both_be_at_most_kcm_s() {
        let with_api = |mut r: RunResult, status: u64, events: u64| {
            r.api.insert("update jobs/status".into(), status);
            r.api.insert("create pods".into(), 10);
            r.api.insert("create events".into(), events);
            r
        };
        let results = vec![
            with_api(run("500/1000", "small", "kcm"), 30, 10),
            with_api(run("500/1000", "small", "jobkeeper"), 30, 50),
        ];
        let rows = status_writes_goal(&both_controllers(&results));
        assert_eq!(rows[0].met, Some(true), "{}", rows[0].figure);
        let results = vec![
            with_api(run("500/1000", "small", "kcm"), 30, 10),
            with_api(run("500/1000", "small", "jobkeeper"), 31, 0),
        ];
        assert_eq!(
            status_writes_goal(&both_controllers(&results))[0].met,
            Some(false)
        );
    }

    #[test]
    fn saturated_p99_is_checked_against_kcm_s_and_paced_runs_below_saturation_are_not() {
        let lat = |mut r: RunResult, ms: f64| {
            r.pod_latency_ms = vec![ms; 100];
            r
        };
        let mut paced_k = lat(run("500/1000", "paced", "kcm"), 900.0);
        let mut paced_j = lat(run("500/1000", "paced", "jobkeeper"), 30.0);
        paced_k.workload.create_rate = Some(5.0);
        paced_j.workload.create_rate = Some(5.0);
        let results = vec![
            paced_k,
            paced_j,
            lat(run("500/1000", "small", "kcm"), 1000.0),
            lat(run("500/1000", "small", "jobkeeper"), 1200.0),
        ];
        let rows = saturated_latency_goal(&both_controllers(&results));
        assert_eq!(
            verdicts(&rows),
            vec![("small @ 500/1000".into(), Some(false))]
        );
        let latency = latency_goal(&results);
        assert_eq!(latency[0].met, Some(true));
        assert_eq!(latency[1].met, None);
    }

    #[test]
    fn status_size_goal_is_1_5_mib_and_the_ceiling_needs_80_percent() {
        let mut j = run("500/1000", "indexed-huge", "jobkeeper");
        j.workload.indexed = true;
        j.max_status_bytes = 1536 * 1024;
        // A status's size is a goal on Indexed runs only.
        let mut small = run("500/1000", "small", "jobkeeper");
        small.max_status_bytes = 2 * 1024 * 1024;
        assert!(status_size_goal(&[small]).is_empty());
        let mut c = run("500/1000", "indexed-huge", "ceiling");
        c.wall_s = 8.0; // jobkeeper at exactly 80 % of the ceiling
        let mut results = vec![j, c];
        assert_eq!(status_size_goal(&results)[0].met, Some(true));
        assert_eq!(ceiling_goal(&results, "500/1000")[0].met, Some(true));
        results[0].max_status_bytes += 1;
        results[1].wall_s = 7.9;
        assert_eq!(status_size_goal(&results)[0].met, Some(false));
        assert_eq!(ceiling_goal(&results, "500/1000")[0].met, Some(false));
    }

    #[test]
    fn a_workload_run_only_at_higher_limits_says_why_and_what_it_would_take() {
        let mut huge = run("500/1000", "indexed-huge", "kcm");
        huge.workload = Workload {
            name: "indexed-huge".into(),
            jobs: 1,
            completions: 100_000,
            parallelism: 1000,
            indexed: true,
            min_qps: 500.0,
            ..Workload::default()
        };
        let results = vec![run("20/30", "small", "kcm"), huge];
        let mut s = String::new();
        write_not_run(&mut s, &results, "20/30", "indexed-huge");
        assert!(s.contains("only at 500 QPS or more"), "{s}");
        // 200,002 requests at 20 QPS: 10,000 s.
        assert!(s.contains("200002 requests alone would take 2.8 h"), "{s}");
        assert_eq!(duration_text(100.1), "2 min");
        assert_eq!(duration_text(59.0), "59 s");
        let goals = goals(&results);
        assert!(goals.starts_with("## Goals"));
    }
}
