//! The mixed Jobs and what is done to them, from a seed. Each Job has a twin (`-ref`,
//! without managedBy, for the built-in controller) built from the same plan, and every
//! action is applied to both the same way. Pod outcomes are fixed per Job through the kwok
//! annotations in tests/cluster/kwok-stages.yaml (run-ms, exit-code), so the twins' pods
//! run and end alike.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::PropagationPolicy;

use crate::rng::Rng;

pub const NAMESPACE: &str = "chaos";
pub const MANAGED_BY: &str = "jobkeeper.dev/job-controller";
/// Every Job of the run carries this label with its plan's name.
pub const PLAN_LABEL: &str = "chaos.jobkeeper.dev/plan";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Plain,
    Indexed,
    ManualSelector,
    /// Every pod fails (exit code 1); the Job fails at backoffLimit + 1 failures.
    Failing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// Created suspended, resumed this long after creation.
    Resume(Duration),
    /// parallelism set to this value, this long after creation.
    Scale(Duration, i32),
    /// Suspended once `parallelism` pods run, resumed this long after.
    SuspendRunning(Duration),
    /// Deleted with this propagation policy once `parallelism` pods run.
    Delete(Policy),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Background,
    Foreground,
    Orphan,
}

impl Policy {
    pub fn to_kube(self) -> PropagationPolicy {
        match self {
            Policy::Background => PropagationPolicy::Background,
            Policy::Foreground => PropagationPolicy::Foreground,
            Policy::Orphan => PropagationPolicy::Orphan,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// `j0042`; the Jobs are `j0042-ours` and `j0042-ref`.
    pub name: String,
    pub shape: Shape,
    pub action: Action,
    /// When the Jobs are created, from the start of the run.
    pub create_at: Duration,
    pub completions: i32,
    pub parallelism: i32,
    pub backoff_limit: i32,
    pub run_ms: u32,
}

impl Plan {
    pub fn ours(&self) -> String {
        format!("{}-ours", self.name)
    }

    pub fn reference(&self) -> String {
        format!("{}-ref", self.name)
    }

    pub fn deleted(&self) -> bool {
        matches!(self.action, Action::Delete(_))
    }
}

/// `jobs` plans, created over the first 40 % of `chaos`.
pub fn plans(jobs: u32, seed: u64, chaos: Duration) -> Vec<Plan> {
    let mut rng = Rng::new(seed);
    let spread = chaos.mul_f64(0.4);
    (0..jobs)
        .map(|i| {
            let at = spread.mul_f64(f64::from(i) / f64::from(jobs.max(1)));
            plan(i, at, &mut rng)
        })
        .collect()
}

fn plan(i: u32, create_at: Duration, rng: &mut Rng) -> Plan {
    let mut p = Plan {
        name: format!("j{i:04}"),
        shape: Shape::Plain,
        action: Action::None,
        create_at,
        completions: rng.between(1, 4) as i32,
        parallelism: rng.between(1, 3) as i32,
        backoff_limit: 6,
        run_ms: rng.between(1000, 6000),
    };
    let secs = |rng: &mut Rng, low, high| Duration::from_secs(u64::from(rng.between(low, high)));
    match i % 10 {
        2 => p.shape = Shape::Indexed,
        3 => p.shape = Shape::ManualSelector,
        4 => {
            p.shape = Shape::Failing;
            (p.completions, p.parallelism) = (1, 1);
            p.backoff_limit = rng.between(0, 1) as i32;
        }
        5 => p.action = Action::Resume(secs(rng, 3, 15)),
        6 | 7 => {
            p.shape = if i % 20 < 10 {
                Shape::Plain
            } else {
                Shape::Indexed
            };
            p.completions = 6;
            let to = if i % 10 == 6 { 3 } else { 1 };
            p.parallelism = 4 - to;
            p.action = Action::Scale(secs(rng, 2, 8), to);
        }
        8 => {
            (p.completions, p.parallelism, p.run_ms) = (4, 2, 20_000);
            p.action = Action::SuspendRunning(secs(rng, 2, 6));
        }
        9 => {
            (p.completions, p.parallelism, p.run_ms) = (2, 2, 30_000);
            let policy =
                [Policy::Background, Policy::Foreground, Policy::Orphan][(i / 10 % 3) as usize];
            p.action = Action::Delete(policy);
        }
        _ => {}
    }
    p
}

/// The Job `name` of `plan`, managed by `managed_by` (None: the built-in controller, or
/// jobkeeper with --all-jobs).
pub fn job(plan: &Plan, name: &str, managed_by: Option<&str>) -> Job {
    let mut pod_labels = BTreeMap::from([("app".to_string(), "chaos".to_string())]);
    let selector = (plan.shape == Shape::ManualSelector).then(|| {
        let own = BTreeMap::from([("chaos.jobkeeper.dev/selector".to_string(), name.to_string())]);
        pod_labels.extend(own.clone());
        LabelSelector {
            match_labels: Some(own),
            ..Default::default()
        }
    });
    let mut annotations =
        BTreeMap::from([("jobkeeper.dev/run-ms".to_string(), plan.run_ms.to_string())]);
    if plan.shape == Shape::Failing {
        annotations.insert("jobkeeper.dev/exit-code".into(), "1".into());
    }
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                PLAN_LABEL.to_string(),
                plan.name.clone(),
            )])),
            ..Default::default()
        },
        spec: Some(JobSpec {
            managed_by: managed_by.map(Into::into),
            completions: Some(plan.completions),
            parallelism: Some(plan.parallelism),
            backoff_limit: Some(plan.backoff_limit),
            completion_mode: (plan.shape == Shape::Indexed).then(|| "Indexed".into()),
            manual_selector: selector.is_some().then_some(true),
            selector,
            suspend: matches!(plan.action, Action::Resume(_)).then_some(true),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec()),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_spec() -> PodSpec {
    PodSpec {
        restart_policy: Some("Never".into()),
        termination_grace_period_seconds: Some(0),
        containers: vec![Container {
            name: "main".into(),
            image: Some("registry.k8s.io/pause:3.10".into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}
