//! Fixtures the planner's tests share: a Job and pod builder, a run of the planner that
//! checks every status against [`validation_errors`] (a copy of the apiserver's status rules
//! for Jobs with a custom managedBy), and [`Sim`], a tiny executor and kubelet.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobSpec, JobStatus, PodFailurePolicy,
    PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyOnPodConditionsPattern,
    PodFailurePolicyRule, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodCondition,
    PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;

use super::indexed::Intervals;
use super::status::*;
use super::*;

pub const JOB_UID: &str = "job-uid";

pub fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

pub fn now() -> Timestamp {
    t(1000)
}

pub fn labels() -> BTreeMap<String, String> {
    [
        ("batch.kubernetes.io/controller-uid", JOB_UID),
        ("batch.kubernetes.io/job-name", "pi"),
        ("controller-uid", JOB_UID),
        ("job-name", "pi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub fn job(completions: Option<i32>, parallelism: i32) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some("pi".into()),
            namespace: Some("ns".into()),
            uid: Some(JOB_UID.into()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completions,
            parallelism: Some(parallelism),
            backoff_limit: Some(6),
            completion_mode: Some("NonIndexed".into()),
            managed_by: Some("jobkeeper.dev/job-controller".into()),
            selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "batch.kubernetes.io/controller-uid".to_string(),
                        JOB_UID.to_string(),
                    )]
                    .into(),
                ),
                match_expressions: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![Container {
                        name: "main".into(),
                        image: Some("busybox".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

pub fn indexed_job(completions: i32, parallelism: i32) -> Job {
    let mut j = job(Some(completions), parallelism);
    j.spec.as_mut().unwrap().completion_mode = Some("Indexed".into());
    j
}

pub fn spec(j: &mut Job) -> &mut JobSpec {
    j.spec.as_mut().unwrap()
}

pub fn st(j: &mut Job) -> &mut JobStatus {
    j.status.get_or_insert_with(Default::default)
}

/// A running Job's status as our previous plan would have left it.
pub fn running(mut j: Job, active: i32) -> Job {
    let s = st(&mut j);
    s.start_time = Some(Time(t(0)));
    s.active = Some(active);
    s.ready = Some(0);
    s.terminating = Some(0);
    s.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
    j
}

pub fn cond(type_: &str, reason: &str, message: &str) -> JobCondition {
    new_condition(type_, "True", reason, message, t(0))
}

pub struct P(pub Pod);

pub fn pod(name: &str, phase: &str) -> P {
    P(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("{name}-uid")),
            labels: Some(labels()),
            finalizers: Some(vec![TRACKING_FINALIZER.into()]),
            creation_timestamp: Some(Time(t(10))),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: "pi".into(),
                uid: JOB_UID.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
    })
}

impl P {
    pub fn ready(self) -> Self {
        self.cond("Ready", "True", t(20))
    }
    pub fn cond(mut self, type_: &str, status: &str, at: Timestamp) -> Self {
        let s = self.0.status.as_mut().unwrap();
        s.conditions
            .get_or_insert_with(Vec::new)
            .push(PodCondition {
                type_: type_.into(),
                status: status.into(),
                last_transition_time: Some(Time(at)),
                ..Default::default()
            });
        self
    }
    pub fn index(mut self, i: i32) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(pods::COMPLETION_INDEX.into(), i.to_string());
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(t(900)));
        self
    }
    pub fn no_finalizer(mut self) -> Self {
        self.0.metadata.finalizers = None;
        self
    }
    pub fn node(mut self) -> Self {
        self.0.spec.as_mut().unwrap().node_name = Some("node-1".into());
        self
    }
    pub fn created(mut self, secs: i64) -> Self {
        self.0.metadata.creation_timestamp = Some(Time(t(secs)));
        self
    }
    pub fn restarts(mut self, n: i32) -> Self {
        self.0.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            name: "main".into(),
            restart_count: n,
            ..Default::default()
        }]);
        self
    }
    pub fn exit(mut self, container: &str, code: i32, finished: i64) -> Self {
        let s = self.0.status.as_mut().unwrap();
        s.container_statuses
            .get_or_insert_with(Vec::new)
            .push(ContainerStatus {
                name: container.into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: code,
                        finished_at: Some(Time(t(finished))),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        self
    }
    pub fn unlabelled(mut self) -> Self {
        self.0.metadata.labels = Some(BTreeMap::new());
        self
    }
    pub fn orphan(mut self) -> Self {
        self.0.metadata.owner_references = None;
        self.0.metadata.finalizers = None;
        self
    }
}

pub fn plan_with(
    j: &Job,
    pods: &[P],
    orphans: &[P],
    removed: &HashSet<String>,
    backoff: &BackoffRecord,
) -> Plan {
    let snapshot = Snapshot {
        job: j,
        pods: pods.iter().map(|p| &p.0).collect(),
        orphans: orphans.iter().map(|p| &p.0).collect(),
        finalizer_removed: removed,
        backoff,
        now: now(),
    };
    let plan = plan(&snapshot);
    let again = super::plan(&snapshot);
    assert_eq!(
        format!("{plan:?}"),
        format!("{again:?}"),
        "planning is not deterministic"
    );
    if let Some(new) = &plan.status {
        let errors = validation_errors(j, new);
        assert!(errors.is_empty(), "status rejected: {errors:?}\n{new:#?}");
    }
    plan
}

pub fn run(j: &Job, pods: &[P]) -> Plan {
    plan_with(j, pods, &[], &HashSet::new(), &BackoffRecord::default())
}

/// The pods the plan creates, as they would be sent.
pub fn built(j: &Job, plan: &Plan) -> Vec<Pod> {
    plan.create.iter().map(|new| new.build(j)).collect()
}

/// The status the Job would have after the plan (the plan's status or the current one).
pub fn status_after(j: &Job, plan: &Plan) -> JobStatus {
    plan.status
        .clone()
        .unwrap_or_else(|| j.status.clone().unwrap_or_default())
}

pub fn has_cond(s: &JobStatus, type_: &str) -> bool {
    is_true(conditions(s), type_)
}

pub fn uncounted(s: &JobStatus) -> (Vec<String>, Vec<String>) {
    let u = s.uncounted_terminated_pods.clone().unwrap_or_default();
    (
        u.succeeded.unwrap_or_default(),
        u.failed.unwrap_or_default(),
    )
}

pub fn names(refs: &[PodRef]) -> Vec<&str> {
    refs.iter().map(|r| r.name.as_str()).collect()
}

/// The apiserver's status validation for Jobs with a custom managedBy (1.37), as listed
/// in the semantics notes.
pub fn validation_errors(j: &Job, new: &JobStatus) -> Vec<String> {
    let old = j.status.clone().unwrap_or_default();
    let spec = j.spec.as_ref().unwrap();
    let mut e = Vec::new();
    counter_errors(spec, &old, new, &mut e);
    condition_errors(&old, new, &mut e);
    index_list_errors(spec, new, &mut e);
    finished_errors(new, &mut e);
    time_errors(spec, &old, new, &mut e);
    e
}

fn counter_errors(spec: &JobSpec, old: &JobStatus, new: &JobStatus, e: &mut Vec<String>) {
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    for (name, v) in [
        ("active", new.active),
        ("ready", new.ready),
        ("terminating", new.terminating),
        ("succeeded", new.succeeded),
        ("failed", new.failed),
    ] {
        if v.unwrap_or(0) < 0 {
            e.push(format!("{name} negative"));
        }
    }
    let (us, uf) = uncounted(new);
    let mut seen = HashSet::new();
    for u in us.iter().chain(&uf) {
        if u.is_empty() || !seen.insert(u.clone()) {
            e.push(format!("bad uncounted uid {u:?}"));
        }
    }
    if new.ready.unwrap_or(0) > new.active.unwrap_or(0) {
        e.push("ready > active".into());
    }
    let exempt = indexed && spec.completions == spec.parallelism;
    if !exempt && new.succeeded.unwrap_or(0) < old.succeeded.unwrap_or(0) {
        e.push("succeeded decreased".into());
    }
    if !exempt && new.failed.unwrap_or(0) < old.failed.unwrap_or(0) {
        e.push("failed decreased".into());
    }
}

fn condition_errors(old: &JobStatus, new: &JobStatus, e: &mut Vec<String>) {
    let c = |s: &JobStatus, t: &str| has_cond(s, t);
    for t in [COMPLETE, FAILED, FAILURE_TARGET, SUCCESS_CRITERIA_MET] {
        if c(old, t) && !c(new, t) {
            e.push(format!("{t} removed"));
        }
    }
    if c(new, SUCCESS_CRITERIA_MET) && (c(new, FAILED) || c(new, FAILURE_TARGET)) {
        e.push("SuccessCriteriaMet with a failure condition".into());
    }
    if c(new, COMPLETE) && (c(new, FAILED) || c(new, FAILURE_TARGET)) {
        e.push("Complete with a failure condition".into());
    }
    if c(new, COMPLETE) && !c(new, SUCCESS_CRITERIA_MET) {
        e.push("Complete without SuccessCriteriaMet".into());
    }
    if c(new, FAILED) && !c(new, FAILURE_TARGET) {
        e.push("Failed without FailureTarget".into());
    }
}

fn index_list_errors(spec: &JobSpec, new: &JobStatus, e: &mut Vec<String>) {
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.unwrap_or(0);
    if let Some(ci) = &new.completed_indexes {
        if !indexed && !ci.is_empty() {
            e.push("completedIndexes on NonIndexed".into());
        } else if !Intervals::is_valid_list(ci, completions) {
            e.push(format!("bad completedIndexes {ci}"));
        }
    }
    if let Some(fi) = &new.failed_indexes {
        if spec.backoff_limit_per_index.is_none() {
            e.push("failedIndexes without backoffLimitPerIndex".into());
        } else if !Intervals::is_valid_list(fi, completions) {
            e.push(format!("bad failedIndexes {fi}"));
        } else {
            let done =
                Intervals::parse(new.completed_indexes.as_deref().unwrap_or(""), completions);
            if Intervals::parse(fi, completions).overlaps(&done) {
                e.push("failedIndexes overlap completedIndexes".into());
            }
        }
    }
}

fn finished_errors(new: &JobStatus, e: &mut Vec<String>) {
    let finished = has_cond(new, COMPLETE) || has_cond(new, FAILED);
    if !finished {
        return;
    }
    let (us, uf) = uncounted(new);
    if new.active.unwrap_or(0) > 0 {
        e.push("finished with active pods".into());
    }
    if new.start_time.is_none() {
        e.push("finished without startTime".into());
    }
    if !us.is_empty() || !uf.is_empty() {
        e.push("finished with uncounted pods".into());
    }
    if new.terminating.unwrap_or(0) > 0 {
        e.push("finished with terminating pods".into());
    }
}

fn time_errors(spec: &JobSpec, old: &JobStatus, new: &JobStatus, e: &mut Vec<String>) {
    let resuming = spec.suspend != Some(true)
        && find(conditions(old), SUSPENDED).is_some_and(|c| c.status == "True");
    if old.start_time.is_some()
        && old.start_time != new.start_time
        && spec.suspend != Some(true)
        && !resuming
    {
        e.push("startTime changed on a running Job".into());
    }
    match (&new.completion_time, has_cond(new, COMPLETE)) {
        (Some(_), false) => e.push("completionTime without Complete".into()),
        (None, true) => e.push("Complete without completionTime".into()),
        _ => {}
    }
    if let (Some(ct), Some(start)) = (&new.completion_time, &new.start_time)
        && ct.0 < start.0
    {
        e.push("completionTime before startTime".into());
    }
    if old.completion_time.is_some() && old.completion_time != new.completion_time {
        e.push("completionTime changed".into());
    }
}

/// A tiny executor and kubelet: applies plans in the documented order to an in-memory
/// Job and pods. Deleted pods without finalizers disappear at once.
pub struct Sim {
    pub job: Job,
    pub pods: Vec<Pod>,
    backoff: BackoffRecord,
    created: usize,
}

impl Sim {
    pub fn new(job: Job) -> Self {
        Sim {
            job,
            pods: Vec::new(),
            backoff: BackoffRecord::default(),
            created: 0,
        }
    }
    pub fn plan(&self) -> Plan {
        let removed = HashSet::new();
        let snapshot = Snapshot {
            job: &self.job,
            pods: self.pods.iter().collect(),
            orphans: vec![],
            finalizer_removed: &removed,
            backoff: &self.backoff,
            now: now(),
        };
        let p = plan(&snapshot);
        if let Some(s) = &p.status {
            let errors = validation_errors(&self.job, s);
            assert!(errors.is_empty(), "status rejected: {errors:?}\n{s:#?}");
        }
        p
    }
    /// Applies the first `steps` steps of the plan (1 delete, 2 create, 3 status,
    /// 4 finalizers).
    pub fn apply(&mut self, p: &Plan, steps: usize) {
        if steps >= 1 {
            for d in &p.delete {
                if let Some(pod) = self
                    .pods
                    .iter_mut()
                    .find(|x| x.metadata.uid.as_deref() == Some(&d.uid))
                {
                    pod.metadata.finalizers = None;
                    pod.metadata.deletion_timestamp = Some(Time(now()));
                }
            }
            self.gc();
        }
        if steps >= 2 {
            for c in &p.create {
                self.created += 1;
                let mut pod = c.build(&self.job);
                let name = format!(
                    "{}{}",
                    pod.metadata.generate_name.clone().unwrap(),
                    self.created
                );
                pod.metadata.uid = Some(format!("{name}-uid"));
                pod.metadata.name = Some(name);
                pod.metadata.creation_timestamp = Some(Time(now()));
                pod.status = Some(PodStatus {
                    phase: Some("Pending".into()),
                    ..Default::default()
                });
                self.pods.push(pod);
            }
        }
        if steps >= 3 {
            if let Some(s) = &p.status {
                self.job.status = Some(s.clone());
            }
            if p.status.is_some() || p.create.is_empty() {
                self.backoff = p.backoff.clone();
            }
        }
        if steps >= 4 {
            for r in &p.remove_finalizers {
                if let Some(pod) = self
                    .pods
                    .iter_mut()
                    .find(|x| x.metadata.uid.as_deref() == Some(&r.uid))
                {
                    pod.metadata.finalizers = None;
                }
            }
            self.gc();
        }
    }
    pub fn gc(&mut self) {
        self.pods.retain(|p| {
            p.metadata.deletion_timestamp.is_none()
                || p.metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| !f.is_empty())
        });
    }
    pub fn set_phase(&mut self, n: usize, phase: &str) {
        self.pods[n].status.as_mut().unwrap().phase = Some(phase.into());
    }
    /// Plans and applies until nothing changes (at most 20 rounds).
    pub fn settle(&mut self) -> Vec<Plan> {
        let mut plans = Vec::new();
        for _ in 0..20 {
            let p = self.plan();
            let done = p.is_noop();
            self.apply(&p, 4);
            plans.push(p);
            if done {
                return plans;
            }
        }
        panic!("plans did not settle");
    }
    pub fn status(&self) -> JobStatus {
        self.job.status.clone().unwrap_or_default()
    }
}

pub fn exit_rule(
    action: &str,
    op: &str,
    values: &[i32],
    container: Option<&str>,
) -> PodFailurePolicyRule {
    PodFailurePolicyRule {
        action: action.into(),
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: container.map(String::from),
            operator: op.into(),
            values: values.to_vec(),
        }),
        on_pod_conditions: None,
    }
}

pub fn condition_rule(action: &str, type_: &str) -> PodFailurePolicyRule {
    PodFailurePolicyRule {
        action: action.into(),
        on_exit_codes: None,
        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
            type_: type_.into(),
            status: Some("True".into()),
        }]),
    }
}

pub fn with_policy(mut j: Job, rules: Vec<PodFailurePolicyRule>) -> Job {
    spec(&mut j).pod_failure_policy = Some(PodFailurePolicy { rules });
    j
}
