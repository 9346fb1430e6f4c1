//! `jobkeeper explain namespace/job`: a read-only account of one Job for a person — who
//! syncs it, its spec, its pods by state, its status, the rule that decides it right now
//! and what jobkeeper does next.
//!
//! [`explain`] does the I/O (one GET, one LIST); everything after that is pure:
//! [`explain_job`] plans exactly as the controller would and [`render`] tells the result.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::core::Selector;
use kube::{Api, Client};

use crate::cluster::lenient::Lenient;
use crate::cluster::pod_index::controller_of;
use crate::config::ExplainArgs;
use crate::plan::indexed::Intervals;
use crate::plan::{
    self, BackoffRecord, EventType, Plan, Snapshot, TRACKING_FINALIZER, plural, pods,
};
use crate::runtime::Ownership;

/// Width of the label column ("Conditions" plus two spaces).
const LABEL: usize = 12;
/// Pods listed per state before "… and N more".
const PODS_PER_STATE: usize = 10;
/// Pod names listed in one action line before "…".
const NAMES_PER_ACTION: usize = 5;

/// Who syncs the Job, as `explain` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Whether jobkeeper, run with the given flags, syncs this Job.
    pub ours: bool,
    /// In words, from [`Ownership::owner_of`].
    pub description: String,
}

pub async fn explain(client: Client, args: &ExplainArgs) -> anyhow::Result<String> {
    let (namespace, name) = &args.job;
    // Both read leniently: a time of year 9999's last day, which the apiserver holds and
    // k8s-openapi's `Time` does not, is explained as the last time there is.
    let jobs: Api<Lenient<Job>> = Api::namespaced(client.clone(), namespace);
    let Lenient(job) = jobs
        .get_opt(name)
        .await
        .with_context(|| format!("reading Job {namespace}/{name}"))?
        .ok_or_else(|| anyhow::anyhow!("Job {namespace}/{name} not found"))?;
    // By the Job's selector: the controller-uid label for a generated selector, the
    // author's labels for a manual one (those pods lack the controller-uid label).
    let selector = job
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .map(Selector::try_from)
        .transpose()
        .with_context(|| format!("reading the selector of Job {namespace}/{name}"))?
        .ok_or_else(|| anyhow::anyhow!("Job {namespace}/{name} has no selector"))?;
    let pods: Api<Lenient<Pod>> = Api::namespaced(client, namespace);
    let pods: Vec<Pod> = pods
        .list(&ListParams::default().labels_from(&selector))
        .await
        .with_context(|| format!("listing the pods of Job {namespace}/{name}"))?
        .items
        .into_iter()
        .map(|p| p.0)
        .collect();
    let ownership = Ownership {
        managed_by: args.managed_by.clone(),
        all_jobs: args.all_jobs,
        namespaces: HashSet::new(),
    };
    let owner = Owner {
        ours: ownership.owns(&job),
        description: ownership.owner_of(&job),
    };
    Ok(explain_job(&job, &pods, &owner, Timestamp::now()))
}

/// Plans one sync of `job` the way the controller would and renders it. `pods` are the
/// pods the Job's selector matches.
pub fn explain_job(job: &Job, pods: &[Pod], owner: &Owner, now: Timestamp) -> String {
    let job_uid = job.metadata.uid.as_deref().unwrap_or_default();
    let mut owned: Vec<&Pod> = Vec::new();
    let mut orphans: Vec<&Pod> = Vec::new();
    for pod in pods {
        match controller_of(pod) {
            Some(o) if o.uid == job_uid => owned.push(pod),
            Some(_) => {}
            None if pod.metadata.deletion_timestamp.is_none() => orphans.push(pod),
            None => {}
        }
    }
    let backoff = backoff_from_pods(job, &owned, now);
    let finalizer_removed = HashSet::new();
    let snapshot = Snapshot {
        job,
        pods: owned.clone(),
        orphans: orphans.clone(),
        finalizer_removed: &finalizer_removed,
        backoff: &backoff,
        now,
    };
    let plan = plan::plan(&snapshot);
    let shown: Vec<&Pod> = owned.into_iter().chain(orphans).collect();
    render(job, &shown, &plan, owner, now)
}

/// The controller keeps its pod failure backoff in memory; `explain` rebuilds it from the
/// finished pods the status already accounts for (finalizer gone, or listed in
/// `uncountedTerminatedPods`). Pods still to be counted are left to the planner, which adds
/// them itself. Pods already deleted are forgotten, so this can only under-count.
pub fn backoff_from_pods(job: &Job, owned: &[&Pod], now: Timestamp) -> BackoffRecord {
    let spec = job.spec.as_ref();
    let only_replace_failed = match spec.and_then(|s| s.pod_replacement_policy.as_deref()) {
        Some(policy) => policy == "Failed",
        None => spec.is_some_and(|s| s.pod_failure_policy.is_some()),
    };
    let uncounted = job
        .status
        .as_ref()
        .and_then(|s| s.uncounted_terminated_pods.as_ref());
    let listed: HashSet<&str> = uncounted
        .iter()
        .flat_map(|u| u.succeeded.iter().chain(u.failed.iter()).flatten())
        .map(String::as_str)
        .collect();
    let accounted =
        |p: &&&Pod| !pods::has_finalizer(p, TRACKING_FINALIZER) || listed.contains(pods::uid(p));
    let succeeded: Vec<&Pod> = owned
        .iter()
        .filter(accounted)
        .filter(|p| pods::is_succeeded(p))
        .copied()
        .collect();
    let failed: Vec<&Pod> = owned
        .iter()
        .filter(accounted)
        .filter(|p| pods::is_failed(p, only_replace_failed))
        .copied()
        .collect();
    plan::backoff::next_record(&BackoffRecord::default(), &succeeded, &failed, now)
}

/// The state a pod is shown under, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PodState {
    Pending,
    Running,
    Ready,
    Terminating,
    Succeeded,
    Failed,
}

impl PodState {
    const ALL: [PodState; 6] = [
        PodState::Pending,
        PodState::Running,
        PodState::Ready,
        PodState::Terminating,
        PodState::Succeeded,
        PodState::Failed,
    ];

    fn of(pod: &Pod) -> PodState {
        match pods::phase(pod) {
            "Succeeded" => PodState::Succeeded,
            "Failed" => PodState::Failed,
            _ if pods::is_deleting(pod) => PodState::Terminating,
            _ if pods::is_ready(pod) => PodState::Ready,
            "Running" => PodState::Running,
            _ => PodState::Pending,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PodState::Pending => "pending",
            PodState::Running => "running",
            PodState::Ready => "ready",
            PodState::Terminating => "terminating",
            PodState::Succeeded => "succeeded",
            PodState::Failed => "failed",
        }
    }
}

/// Tells a planned Job to a person. Pure, so every layout is unit-tested.
pub fn render(job: &Job, pods: &[&Pod], plan: &Plan, owner: &Owner, now: Timestamp) -> String {
    let mut out = Out::default();
    let namespace = job.metadata.namespace.as_deref().unwrap_or("");
    let name = job.metadata.name.as_deref().unwrap_or("");
    out.field("Job", &format!("{namespace}/{name}"));
    out.field("Owner", &owner.description);
    let (spec_line, spec_extra) = spec_lines(job);
    out.field("Spec", &spec_line);
    if let Some(extra) = spec_extra {
        out.more(&extra);
    }
    let status = job.status.clone().unwrap_or_default();
    if let Some(start) = &status.start_time {
        out.field("Started", &format!("{} ({})", start.0, ago(start.0, now)));
    }
    if let Some(done) = &status.completion_time {
        out.field("Completed", &format!("{} ({})", done.0, ago(done.0, now)));
    }
    if let Some(deleted) = &job.metadata.deletion_timestamp {
        out.field(
            "Deleting",
            &format!("since {} ({})", deleted.0, ago(deleted.0, now)),
        );
    }

    let (counters, lists) = status_lines(&status);
    out.field("Status", &counters);
    for line in lists {
        out.more(&line);
    }
    let conditions = plan::status::conditions(&status);
    if conditions.is_empty() {
        out.field("Conditions", "none");
    } else {
        let rows: Vec<[String; 4]> = conditions.iter().map(|c| condition_row(c, now)).collect();
        for (i, line) in table(&rows).into_iter().enumerate() {
            if i == 0 {
                out.field("Conditions", &line);
            } else {
                out.more(&line);
            }
        }
    }

    render_pods(&mut out, job, pods, plan, now);

    if owner.ours {
        out.field("Rule", &plan.outcome.rule);
        render_next(&mut out, job, &status, plan);
    } else {
        out.field(
            "Next",
            &format!(
                "nothing from jobkeeper: {} syncs this Job",
                owner.description
            ),
        );
    }
    out.text
}

#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn field(&mut self, label: &str, value: &str) {
        let line = format!("{label:<LABEL$}{value}");
        self.text.push_str(line.trim_end());
        self.text.push('\n');
    }

    /// A continuation line under the last field's value.
    fn more(&mut self, value: &str) {
        self.field("", value);
    }
}

fn spec_lines(job: &Job) -> (String, Option<String>) {
    let Some(spec) = job.spec.as_ref() else {
        return ("none".to_string(), None);
    };
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let mut main = vec![
        match spec.completions {
            Some(c) => format!("completions {c}"),
            None => "completions unset (any success)".to_string(),
        },
        format!("parallelism {}", spec.parallelism.unwrap_or(1)),
        spec.completion_mode
            .clone()
            .unwrap_or_else(|| "NonIndexed".to_string()),
    ];
    match (indexed, spec.backoff_limit_per_index) {
        (true, Some(per_index)) => {
            main.push(format!("backoffLimitPerIndex {per_index}"));
            if let Some(limit) = spec.backoff_limit {
                main.push(format!("backoffLimit {limit}"));
            }
        }
        _ => main.push(format!("backoffLimit {}", spec.backoff_limit.unwrap_or(6))),
    }
    main.push(match spec.active_deadline_seconds {
        Some(s) => format!("activeDeadlineSeconds {s}"),
        None => "no deadline".to_string(),
    });
    main.push(if spec.suspend == Some(true) {
        "suspended".to_string()
    } else {
        "not suspended".to_string()
    });

    let mut extra = Vec::new();
    if let Some(max) = spec.max_failed_indexes {
        extra.push(format!("maxFailedIndexes {max}"));
    }
    if let Some(policy) = &spec.pod_failure_policy {
        extra.push(format!("podFailurePolicy {} rules", policy.rules.len()));
    }
    if let Some(policy) = &spec.success_policy {
        extra.push(format!("successPolicy {} rules", policy.rules.len()));
    }
    // The apiserver writes the default (TerminatingOrFailed) into every Job; only the
    // other value changes anything worth a line.
    if let Some(policy) = spec
        .pod_replacement_policy
        .as_deref()
        .filter(|p| *p != "TerminatingOrFailed")
    {
        extra.push(format!("podReplacementPolicy {policy}"));
    }
    if let Some(ttl) = spec.ttl_seconds_after_finished {
        extra.push(format!("ttlSecondsAfterFinished {ttl}"));
    }
    if spec.manual_selector == Some(true) {
        extra.push("manualSelector".to_string());
    }
    let extra = (!extra.is_empty()).then(|| extra.join(", "));
    (main.join(", "), extra)
}

fn uncounted_counts(status: &JobStatus) -> (usize, usize) {
    status
        .uncounted_terminated_pods
        .as_ref()
        .map_or((0, 0), |u| {
            (
                u.succeeded.as_ref().map_or(0, Vec::len),
                u.failed.as_ref().map_or(0, Vec::len),
            )
        })
}

fn status_lines(status: &JobStatus) -> (String, Vec<String>) {
    let counters = format!(
        "active {}, ready {}, terminating {}, succeeded {}, failed {}",
        status.active.unwrap_or(0),
        status.ready.unwrap_or(0),
        status.terminating.unwrap_or(0),
        status.succeeded.unwrap_or(0),
        status.failed.unwrap_or(0),
    );
    let mut lists = Vec::new();
    let (succeeded, failed) = uncounted_counts(status);
    if succeeded + failed > 0 {
        lists.push(format!(
            "uncounted: {succeeded} succeeded, {failed} failed (tracking finalizers being removed)"
        ));
    }
    for (label, value) in [
        ("completedIndexes", &status.completed_indexes),
        ("failedIndexes", &status.failed_indexes),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            lists.push(format!("{label} {v}"));
        }
    }
    (counters, lists)
}

fn condition_row(c: &JobCondition, now: Timestamp) -> [String; 4] {
    [
        format!("{}={}", c.type_, c.status),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
        c.last_transition_time
            .as_ref()
            .map(|t| format!("({})", ago(t.0, now)))
            .unwrap_or_default(),
    ]
}

/// Left-aligned columns, two spaces apart; empty trailing cells leave no padding.
fn table<const N: usize>(rows: &[[String; N]]) -> Vec<String> {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 && !cell.is_empty() {
                    line.push_str("  ");
                }
                if i + 1 < N && row[i + 1..].iter().any(|c| !c.is_empty()) {
                    let _ = write!(line, "{cell:<width$}", width = widths[i]);
                } else {
                    line.push_str(cell);
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

fn render_pods(out: &mut Out, job: &Job, pods: &[&Pod], plan: &Plan, now: Timestamp) {
    if pods.is_empty() {
        out.field("Pods", "none");
        return;
    }
    let mut sorted: Vec<&Pod> = pods.to_vec();
    sorted.sort_by_key(|p| {
        (
            PodState::of(p),
            pods::completion_index(p).unwrap_or(i32::MAX),
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });
    let counts: Vec<String> = PodState::ALL
        .iter()
        .map(|s| (s, sorted.iter().filter(|p| PodState::of(p) == *s).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", s.name()))
        .collect();
    out.field(
        "Pods",
        &format!("{} ({})", plural(sorted.len(), "pod"), counts.join(", ")),
    );
    let indexed = job
        .spec
        .as_ref()
        .is_some_and(|s| s.completion_mode.as_deref() == Some("Indexed"));
    let mut rows: Vec<[String; 4]> = Vec::new();
    for state in PodState::ALL {
        let in_state: Vec<&&Pod> = sorted.iter().filter(|p| PodState::of(p) == state).collect();
        for (i, pod) in in_state.iter().enumerate() {
            if i == PODS_PER_STATE {
                rows.push([
                    state.name().to_string(),
                    format!("… and {} more", in_state.len() - PODS_PER_STATE),
                    String::new(),
                    String::new(),
                ]);
                break;
            }
            let index = match pods::completion_index(pod) {
                Some(ix) => format!("index {ix}"),
                None if indexed => "no index".to_string(),
                None => String::new(),
            };
            rows.push([
                state.name().to_string(),
                pod.metadata.name.clone().unwrap_or_default(),
                index,
                pod_detail(pod, state, plan, now),
            ]);
        }
    }
    for line in table(&rows) {
        out.more(&line);
    }
}

fn pod_detail(pod: &Pod, state: PodState, plan: &Plan, now: Timestamp) -> String {
    let mut parts: Vec<String> = Vec::new();
    let status = pod.status.as_ref();
    match state {
        PodState::Pending => {
            let waiting = status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
            if let Some(reason) = waiting {
                parts.push(reason);
            } else if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none()
            {
                parts.push("not scheduled".to_string());
            }
        }
        PodState::Running | PodState::Ready => {}
        PodState::Terminating => {
            if let Some(t) = &pod.metadata.deletion_timestamp {
                parts.push(format!("deleted {}", ago(t.0, now)));
            }
        }
        PodState::Succeeded => {
            parts.push(format!(
                "finished {}",
                ago(pods::finish_time(pod, now), now)
            ));
        }
        PodState::Failed => {
            if let Some(why) = failure_reason(pod) {
                parts.push(why);
            }
            parts.push(format!(
                "finished {}",
                ago(pods::finish_time(pod, now), now)
            ));
        }
    }
    let restarts = pods::restart_count(pod);
    if restarts > 0 {
        parts.push(plural(restarts as usize, "restart"));
    }
    let finished = matches!(state, PodState::Succeeded | PodState::Failed);
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let uid = pods::uid(pod);
    let acts_on = |refs: &[plan::PodRef]| refs.iter().any(|r| r.uid == uid && r.name == name);
    if acts_on(&plan.adopt) {
        parts.push("orphan: to adopt".to_string());
    } else if controller_of(pod).is_none() {
        parts.push("orphan".to_string());
    }
    if acts_on(&plan.release) {
        parts.push("no longer matches the selector: to release".to_string());
    }
    if acts_on(&plan.delete) {
        parts.push("to delete".to_string());
    }
    if finished && pods::has_finalizer(pod, TRACKING_FINALIZER) {
        parts.push(if acts_on(&plan.remove_finalizers) {
            "not counted yet: finalizer to remove".to_string()
        } else {
            "not counted yet".to_string()
        });
    }
    parts.join(", ")
}

/// Exit code and reason of the container that failed, else the pod's own reason
/// (evictions, deadline) or its DisruptionTarget condition.
fn failure_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let terminated: Vec<_> = status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten()
        .filter_map(|c| Some((c.name.as_str(), c.state.as_ref()?.terminated.as_ref()?)))
        .collect();
    let failed = terminated
        .iter()
        .find(|(_, t)| t.exit_code != 0)
        .or(terminated.first());
    if let Some((container, t)) = failed {
        let mut text = format!("exit {}", t.exit_code);
        if let Some(reason) = &t.reason {
            text.push_str(&format!(" ({reason})"));
        }
        if terminated.len() > 1 {
            text.push_str(&format!(" in {container}"));
        }
        return Some(text);
    }
    if let Some(reason) = &status.reason {
        return Some(reason.clone());
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        .map(|c| format!("DisruptionTarget ({})", c.reason.as_deref().unwrap_or("")))
}

fn render_next(out: &mut Out, job: &Job, status: &JobStatus, plan: &Plan) {
    let mut actions: Vec<String> = Vec::new();
    if !plan.delete.is_empty() {
        actions.push(format!(
            "delete {}: {}",
            plural(plan.delete.len(), "pod"),
            names(plan.delete.iter().map(|r| r.name.as_str()))
        ));
    }
    if !plan.create.is_empty() {
        let mut indexes: Vec<i32> = plan.create.iter().filter_map(|new| new.index).collect();
        indexes.sort_unstable();
        let mut text = format!("create {}", plural(plan.create.len(), "pod"));
        if !indexes.is_empty() {
            text.push_str(&format!(" (indexes {})", Intervals::from_indexes(&indexes)));
        }
        actions.push(text);
    }
    if !plan.adopt.is_empty() {
        actions.push(format!(
            "adopt {}: {}",
            plural(plan.adopt.len(), "orphan pod"),
            names(plan.adopt.iter().map(|r| r.name.as_str()))
        ));
    }
    if !plan.release.is_empty() {
        actions.push(format!(
            "release {}: {}",
            plural(plan.release.len(), "pod"),
            names(plan.release.iter().map(|r| r.name.as_str()))
        ));
    }
    if let Some(new) = &plan.status {
        let changes = status_changes(status, new);
        actions.push(if changes.is_empty() {
            "write the status (timestamps only)".to_string()
        } else {
            format!("write the status: {}", changes.join(", "))
        });
    }
    if !plan.remove_finalizers.is_empty() {
        actions.push(format!(
            "remove the tracking finalizer from {}: {}",
            plural(plan.remove_finalizers.len(), "pod"),
            names(plan.remove_finalizers.iter().map(|r| r.name.as_str()))
        ));
    }
    for e in &plan.events {
        let kind = match e.type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        actions.push(format!("record event {kind} {}: {}", e.reason, e.message));
    }

    let finished = plan::status::finished(status);
    if actions.is_empty() {
        let text = match (finished, plan.requeue_after) {
            (Some(c), _) => format!(
                "nothing: the Job is finished ({}: {})",
                c.type_,
                c.reason.as_deref().unwrap_or("")
            ),
            (None, Some(after)) => match plan.outcome.pod_backoff {
                Some(wait) => format!(
                    "nothing now: the pod failure backoff holds the next pod for {}; looks again then",
                    seconds(wait)
                ),
                None => format!("nothing now; looks again in {}", seconds(after)),
            },
            (None, None) if job.metadata.deletion_timestamp.is_some() => {
                "nothing: the Job is being deleted".to_string()
            }
            (None, None) => "nothing until a pod or the Job changes".to_string(),
        };
        out.field("Next", &text);
        return;
    }
    out.field("Next", "jobkeeper will");
    for action in &actions {
        out.more(&format!("- {action}"));
    }
    if finished.is_some() {
        out.more("then nothing more: the Job is finished");
    } else {
        match plan.requeue_after {
            Some(after) => out.more(&format!(
                "then plan again on the result (at the latest in {})",
                seconds(after)
            )),
            None => out.more("then plan again on the result"),
        }
    }
}

/// What a status write changes, field by field.
fn status_changes(old: &JobStatus, new: &JobStatus) -> Vec<String> {
    let mut changes = Vec::new();
    for (label, before, after) in [
        ("active", old.active, new.active),
        ("ready", old.ready, new.ready),
        ("terminating", old.terminating, new.terminating),
        ("succeeded", old.succeeded, new.succeeded),
        ("failed", old.failed, new.failed),
    ] {
        let (before, after) = (before.unwrap_or(0), after.unwrap_or(0));
        if before != after {
            changes.push(format!("{label} {before} → {after}"));
        }
    }
    let (old_s, old_f) = uncounted_counts(old);
    let (new_s, new_f) = uncounted_counts(new);
    if old_s != new_s {
        changes.push(format!("uncounted succeeded {old_s} → {new_s}"));
    }
    if old_f != new_f {
        changes.push(format!("uncounted failed {old_f} → {new_f}"));
    }
    for (label, before, after) in [
        (
            "completedIndexes",
            &old.completed_indexes,
            &new.completed_indexes,
        ),
        ("failedIndexes", &old.failed_indexes, &new.failed_indexes),
    ] {
        let (before, after) = (
            before.as_deref().unwrap_or(""),
            after.as_deref().unwrap_or(""),
        );
        if before != after {
            let show = |s: &str| {
                if s.is_empty() {
                    "\"\"".to_string()
                } else {
                    s.to_string()
                }
            };
            changes.push(format!("{label} {} → {}", show(before), show(after)));
        }
    }
    match (&old.start_time, &new.start_time) {
        (None, Some(_)) => changes.push("set startTime".to_string()),
        (Some(a), Some(b)) if a != b => changes.push("reset startTime".to_string()),
        (Some(_), None) => changes.push("clear startTime".to_string()),
        _ => {}
    }
    if old.completion_time.is_none() && new.completion_time.is_some() {
        changes.push("set completionTime".to_string());
    }
    let before = plan::status::conditions(old);
    for c in plan::status::conditions(new) {
        let reason = c.reason.as_deref().unwrap_or("");
        match plan::status::find(before, &c.type_) {
            None => changes.push(format!("add condition {}={} ({reason})", c.type_, c.status)),
            Some(b) if b.status != c.status || b.reason != c.reason => changes.push(format!(
                "condition {} {} → {} ({reason})",
                c.type_, b.status, c.status
            )),
            Some(_) => {}
        }
    }
    changes
}

/// The first names (sorted), and how many more there are: for a log line or a note.
pub fn names<'a>(all: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = all.len();
    let mut shown: Vec<&str> = all.take(NAMES_PER_ACTION).collect();
    shown.sort_unstable();
    let mut text = shown.join(", ");
    if total > NAMES_PER_ACTION {
        text.push_str(&format!(" and {} more", total - NAMES_PER_ACTION));
    }
    text
}

/// Whole seconds, rounded up (a wait of 300 ms is "1 s", never "0 s").
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_millis().div_ceil(1000))
}

/// "12s ago", "3m5s ago", "2h10m ago", "4d3h ago"; "in 5s" for a time ahead of `now`.
fn ago(t: Timestamp, now: Timestamp) -> String {
    let d = now.duration_since(t);
    let (future, secs) = (d.is_negative(), d.as_secs().unsigned_abs());
    let text = match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => match s % 60 {
            0 => format!("{}m", s / 60),
            r => format!("{}m{r}s", s / 60),
        },
        s if s < 86400 => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h{m}m", s / 3600),
        },
        s => match (s % 86400) / 3600 {
            0 => format!("{}d", s / 86400),
            h => format!("{}d{h}h", s / 86400),
        },
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::batch::v1::{JobSpec, UncountedTerminatedPods};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodSpec,
        PodStatus, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, ObjectMeta, OwnerReference, Time,
    };

    use super::*;
    use crate::cluster::selector_watches::CONTROLLER_UID_LABEL;

    const UID: &str = "job-uid";
    const T0: &str = "2026-01-01T00:00:00Z";

    fn at(seconds: i64) -> Timestamp {
        let t0: Timestamp = T0.parse().unwrap();
        t0 + k8s_openapi::jiff::SignedDuration::from_secs(seconds)
    }

    fn job(completions: Option<i32>, parallelism: i32) -> Job {
        let labels = BTreeMap::from([(CONTROLLER_UID_LABEL.to_string(), UID.to_string())]);
        Job {
            metadata: ObjectMeta {
                name: Some("work".into()),
                namespace: Some("ns".into()),
                uid: Some(UID.into()),
                creation_timestamp: Some(Time(at(0))),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                managed_by: Some(crate::config::DEFAULT_MANAGER.into()),
                selector: Some(LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..Default::default()
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec::default()),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn with_status(mut j: Job, status: JobStatus) -> Job {
        j.status = Some(status);
        j
    }

    fn started(active: i32, ready: i32, failed: i32) -> JobStatus {
        JobStatus {
            active: Some(active),
            ready: Some(ready),
            terminating: Some(0),
            failed: (failed > 0).then_some(failed),
            start_time: Some(Time(at(0))),
            uncounted_terminated_pods: Some(UncountedTerminatedPods::default()),
            ..Default::default()
        }
    }

    #[derive(Clone, Copy)]
    enum P {
        Pending,
        Running,
        Ready,
        Succeeded,
        Failed(i32),
    }

    /// A pod of the Job created at `created`; finished pods finish 10 s later.
    fn pod(name: &str, state: P, finalizer: bool, created: i64) -> Pod {
        let finished = Time(at(created + 10));
        let terminated = |code: i32, reason: &str| ContainerStatus {
            name: "main".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    reason: Some(reason.into()),
                    finished_at: Some(finished.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ready = |status: &str| PodCondition {
            type_: "Ready".into(),
            status: status.into(),
            last_transition_time: Some(Time(at(created + 1))),
            ..Default::default()
        };
        let (phase, conditions, containers) = match state {
            P::Pending => ("Pending", vec![], vec![]),
            P::Running => ("Running", vec![ready("False")], vec![]),
            P::Ready => ("Running", vec![ready("True")], vec![]),
            P::Succeeded => ("Succeeded", vec![], vec![terminated(0, "Completed")]),
            P::Failed(code) => ("Failed", vec![], vec![terminated(code, "Error")]),
        };
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(at(created))),
                labels: Some(BTreeMap::from([(
                    CONTROLLER_UID_LABEL.to_string(),
                    UID.to_string(),
                )])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: "work".into(),
                    uid: UID.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                finalizers: finalizer.then(|| vec![TRACKING_FINALIZER.to_string()]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(conditions),
                container_statuses: Some(containers),
                ..Default::default()
            }),
        }
    }

    fn ours() -> Owner {
        Owner {
            ours: true,
            description: "jobkeeper (spec.managedBy jobkeeper.dev/job-controller)".into(),
        }
    }

    fn line<'a>(text: &'a str, label: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in\n{text}"))
    }

    #[test]
    fn explain_tells_rule_and_next_step() {
        let failed_job = {
            let mut status = started(0, 0, 7);
            status.conditions = Some(vec![
                plan::status::new_condition(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    at(60),
                ),
                plan::status::new_condition(
                    "Failed",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    at(60),
                ),
            ]);
            with_status(job(Some(1), 1), status)
        };
        let suspended_job = {
            let mut j = with_status(job(Some(2), 2), started(1, 1, 0));
            j.spec.as_mut().unwrap().suspend = Some(true);
            j
        };
        struct Case {
            name: &'static str,
            job: Job,
            pods: Vec<Pod>,
            now: i64,
            owner: Owner,
            rule: Option<&'static str>,
            next: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "a new Job gets its first pods and a start time",
                job: job(Some(3), 2),
                pods: vec![],
                now: 0,
                owner: ours(),
                rule: Some("0 of 3 completions; backoffLimit 6, 0 failures counted"),
                next: &[
                    "Next        jobkeeper will",
                    "            - create 2 pods",
                    "            - write the status: active 0 → 2, set startTime",
                    "            then plan again on the result",
                ],
            },
            Case {
                name: "a running Job with every pod in place waits for its pods",
                job: with_status(job(Some(3), 2), started(2, 1, 0)),
                pods: vec![
                    pod("work-a", P::Ready, true, 1),
                    pod("work-b", P::Running, true, 2),
                ],
                now: 30,
                owner: ours(),
                rule: Some("0 of 3 completions; backoffLimit 6, 0 failures counted"),
                next: &["Next        nothing until a pod or the Job changes"],
            },
            Case {
                name: "a counted failure holds the next pod back for the backoff",
                job: with_status(job(Some(1), 1), started(0, 0, 1)),
                pods: vec![pod("work-a", P::Failed(3), false, 0)],
                now: 13,
                owner: ours(),
                rule: Some(
                    "0 of 1 completions; backoffLimit 6, 1 failure counted; \
                     next pod in 7 s (10 s backoff after 1 failure)",
                ),
                next: &[
                    "Next        nothing now: the pod failure backoff holds the next pod for 7 s; looks again then",
                ],
            },
            Case {
                name: "a new failure is recorded before its finalizer goes",
                job: with_status(job(Some(1), 1), started(1, 0, 0)),
                pods: vec![pod("work-a", P::Failed(1), true, 0)],
                now: 11,
                owner: ours(),
                rule: Some(
                    "0 of 1 completions; backoffLimit 6, 0 failures counted; \
                     next pod in 9 s (10 s backoff after 1 failure)",
                ),
                next: &[
                    "Next        jobkeeper will",
                    "            - write the status: active 1 → 0, uncounted failed 0 → 1",
                    "            - remove the tracking finalizer from 1 pod: work-a",
                    "            then plan again on the result (at the latest in 9 s)",
                ],
            },
            Case {
                name: "a suspended Job loses its active pods",
                job: suspended_job,
                pods: vec![pod("work-a", P::Ready, true, 0)],
                now: 20,
                owner: ours(),
                rule: Some("Job suspended: no pods run"),
                next: &[
                    "Next        jobkeeper will",
                    "            - delete 1 pod: work-a",
                    "            - write the status: active 1 → 0, ready 1 → 0, terminating 0 → 1, clear startTime, add condition Suspended=True (JobSuspended)",
                    "            - record event Normal Suspended: Job suspended",
                    "            then plan again on the result",
                ],
            },
            Case {
                name: "a failed Job is left alone",
                job: failed_job.clone(),
                pods: vec![pod("work-a", P::Failed(1), false, 0)],
                now: 120,
                owner: ours(),
                rule: Some("the Job is finished (Failed: BackoffLimitExceeded)"),
                next: &["Next        nothing: the Job is finished (Failed: BackoffLimitExceeded)"],
            },
            Case {
                name: "a finished Job's leftover finalizers are removed",
                job: failed_job,
                pods: vec![pod("work-a", P::Failed(1), true, 0)],
                now: 120,
                owner: ours(),
                rule: Some("the Job is finished (Failed: BackoffLimitExceeded)"),
                next: &[
                    "Next        jobkeeper will",
                    "            - remove the tracking finalizer from 1 pod: work-a",
                    "            then nothing more: the Job is finished",
                ],
            },
            Case {
                name: "someone else's Job is shown but not acted on",
                job: job(Some(1), 1),
                pods: vec![pod("work-a", P::Pending, true, 0)],
                now: 5,
                owner: Owner {
                    ours: false,
                    description: "the built-in job controller (spec.managedBy unset)".into(),
                },
                rule: None,
                next: &[
                    "Next        nothing from jobkeeper: the built-in job controller (spec.managedBy unset) syncs this Job",
                ],
            },
        ];
        for case in cases {
            let text = explain_job(&case.job, &case.pods, &case.owner, at(case.now));
            match case.rule {
                Some(rule) => assert_eq!(
                    line(&text, "Rule"),
                    format!("Rule        {rule}"),
                    "{}:\n{text}",
                    case.name
                ),
                None => assert!(!text.contains("\nRule"), "{}:\n{text}", case.name),
            }
            let next_at = text.find("\nNext").map_or(text.len(), |i| i + 1);
            let next: Vec<&str> = text[next_at..].lines().collect();
            assert_eq!(next, case.next, "{}:\n{text}", case.name);
        }
    }

    #[test]
    fn explain_lays_out_pods_by_state() {
        let mut j = with_status(job(Some(3), 2), started(1, 1, 2));
        j.status.as_mut().unwrap().succeeded = Some(1);
        j.status.as_mut().unwrap().conditions = None;
        let pods = vec![
            pod("work-ok", P::Succeeded, false, 0),
            pod("work-bad1", P::Failed(1), false, 20),
            pod("work-bad2", P::Failed(137), false, 40),
            pod("work-live", P::Ready, true, 45),
            pod("work-new", P::Pending, true, 55),
        ];
        let text = explain_job(&j, &pods, &ours(), at(60));
        // The status is stale (active 1, two pods active): the next write fixes it, and
        // with two of the remaining two completions running, the backoff holds nothing.
        let expected = "\
Job         ns/work
Owner       jobkeeper (spec.managedBy jobkeeper.dev/job-controller)
Spec        completions 3, parallelism 2, NonIndexed, backoffLimit 6, no deadline, not suspended
Started     2026-01-01T00:00:00Z (1m ago)
Status      active 1, ready 1, terminating 0, succeeded 1, failed 2
Conditions  none
Pods        5 pods (1 pending, 1 ready, 1 succeeded, 2 failed)
            pending    work-new
            ready      work-live
            succeeded  work-ok    finished 50s ago
            failed     work-bad1  exit 1 (Error), finished 30s ago
            failed     work-bad2  exit 137 (Error), finished 10s ago
Rule        1 of 3 completions; backoffLimit 6, 2 failures counted
Next        jobkeeper will
            - write the status: active 1 → 2
            then plan again on the result
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn durations_read_like_kubectl() {
        for (seconds, text) in [
            (0, "0s ago"),
            (59, "59s ago"),
            (60, "1m ago"),
            (125, "2m5s ago"),
            (3600, "1h ago"),
            (7260, "2h1m ago"),
            (90000, "1d1h ago"),
            (-5, "in 5s"),
        ] {
            assert_eq!(ago(at(0), at(seconds)), text, "{seconds}");
        }
    }

    #[test]
    fn tables_align_columns_and_leave_no_trailing_space() {
        let rows = [
            ["a".to_string(), "long-name".into(), String::new()],
            ["bbb".to_string(), "x".into(), "note".into()],
        ];
        assert_eq!(table(&rows), ["a    long-name", "bbb  x          note"]);
    }

    #[test]
    fn status_changes_name_each_field() {
        let old = started(1, 1, 0);
        let mut new = old.clone();
        new.active = Some(0);
        new.ready = Some(0);
        new.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            failed: Some(vec!["x".into()]),
            succeeded: None,
        });
        new.conditions = Some(vec![plan::status::new_condition(
            "FailureTarget",
            "True",
            "BackoffLimitExceeded",
            "m",
            at(1),
        )]);
        assert_eq!(
            status_changes(&old, &new),
            [
                "active 1 → 0",
                "ready 1 → 0",
                "uncounted failed 0 → 1",
                "add condition FailureTarget=True (BackoffLimitExceeded)"
            ]
        );
        assert!(status_changes(&old, &old).is_empty());
    }

    #[test]
    fn backoff_is_rebuilt_from_counted_failures_after_the_last_success() {
        let j = with_status(job(Some(3), 1), started(0, 0, 3));
        let pods = [
            pod("a", P::Failed(1), false, 0),
            pod("b", P::Succeeded, false, 20),
            pod("c", P::Failed(1), false, 40),
            pod("d", P::Failed(1), false, 60),
            // Not counted yet: the planner adds it itself.
            pod("e", P::Failed(1), true, 80),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        assert_eq!(
            backoff_from_pods(&j, &refs, at(100)),
            BackoffRecord {
                failures_after_last_success: 2,
                last_failure_time: Some(at(70)),
                last_success_time: Some(at(30)),
            }
        );
    }
}
