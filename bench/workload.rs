//! The workloads and the Jobs they create. Every side gets the same Jobs; only
//! `spec.managedBy` differs (unset for KCM, ours for jobkeeper, the ceiling's own).

use k8s_openapi::api::batch::v1::Job;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Args;

/// The fake node every benchmark pod is bound to. Binding in the template keeps the
/// scheduler (and its own 50 QPS client limit) out of the measurement, for both sides.
pub const NODE: &str = "kwok-node-0";
pub const BENCH_LABEL: &str = "jobkeeper.dev/bench";
pub const EXIT_CODE_ANNOTATION: &str = "jobkeeper.dev/exit-code";
pub const CEILING_MANAGER: &str = "jobkeeper.dev/bench-ceiling";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub jobs: u32,
    pub parallelism: u32,
    pub completions: u32,
    pub indexed: bool,
    /// Pods per Job that fail once (the first ones seen), then are replaced.
    pub fail_per_job: u32,
    /// Jobs created per second; None: all at once.
    pub create_rate: Option<f64>,
    /// KiB of pod template annotation (every pod carries a copy): a fat template.
    #[serde(default)]
    pub template_kib: u32,
}

fn scaled(n: u32, scale: f64) -> u32 {
    ((f64::from(n) * scale).round() as u32).max(1)
}

impl Workload {
    pub fn from_args(name: &str, a: &Args) -> anyhow::Result<Workload> {
        let s = a.scale;
        let w = match name {
            "paced" => Workload {
                name: name.into(),
                jobs: scaled(a.paced_jobs, s),
                parallelism: 1,
                completions: 1,
                indexed: false,
                fail_per_job: 0,
                create_rate: Some(a.paced_rate),
                template_kib: 0,
            },
            "small" => Workload {
                name: name.into(),
                jobs: scaled(a.small_jobs, s),
                parallelism: 1,
                completions: 1,
                indexed: false,
                fail_per_job: 0,
                create_rate: None,
                template_kib: 0,
            },
            "wide" => Workload {
                name: name.into(),
                jobs: scaled(a.wide_jobs, s),
                parallelism: a.wide_parallelism,
                completions: a.wide_completions,
                indexed: false,
                fail_per_job: (f64::from(a.wide_completions) * a.wide_fail_percent / 100.0).round()
                    as u32,
                create_rate: None,
                template_kib: 0,
            },
            "indexed" => Workload {
                name: name.into(),
                jobs: 1,
                parallelism: scaled(a.indexed_parallelism, s),
                completions: scaled(a.indexed_completions, s),
                indexed: true,
                fail_per_job: 0,
                create_rate: None,
                template_kib: 0,
            },
            "fat" => Workload {
                name: name.into(),
                jobs: scaled(a.fat_jobs, s),
                parallelism: scaled(a.fat_parallelism, s),
                completions: scaled(a.fat_completions, s),
                indexed: false,
                fail_per_job: 0,
                create_rate: None,
                template_kib: a.fat_template_kib,
            },
            other => {
                anyhow::bail!("unknown workload {other:?} (paced, small, wide, indexed, fat)")
            }
        };
        Ok(w)
    }

    /// Pods a perfect controller creates for one Job.
    pub fn pods_per_job(&self) -> u32 {
        self.completions + self.fail_per_job
    }

    /// The fewest requests one Job costs: a create and a finalizer patch per pod, two
    /// status writes.
    pub fn minimum_requests_per_job(&self) -> u32 {
        2 * self.pods_per_job() + 2
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} Job(s) × parallelism {} × completions {}{}",
            self.jobs,
            self.parallelism,
            self.completions,
            if self.indexed { " (Indexed)" } else { "" }
        );
        if self.fail_per_job > 0 {
            s += &format!(", {} pod(s) per Job failing once", self.fail_per_job);
        }
        if let Some(rate) = self.create_rate {
            s += &format!(", created at {rate}/s");
        }
        if self.template_kib > 0 {
            s += &format!(", a {} KiB pod template", self.template_kib);
        }
        s
    }

    pub fn job(&self, index: u32, managed_by: Option<&str>) -> Job {
        let mut spec = json!({
            "parallelism": self.parallelism,
            "completions": self.completions,
            // Enough that the injected failures never fail a Job.
            "backoffLimit": self.fail_per_job + 6,
            "completionMode": if self.indexed { "Indexed" } else { "NonIndexed" },
            "template": {
                "metadata": { "labels": { BENCH_LABEL: self.name } },
                "spec": {
                    "restartPolicy": "Never",
                    "nodeName": NODE,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{ "name": "work", "image": "registry.k8s.io/pause:3.10" }]
                }
            }
        });
        if let Some(m) = managed_by {
            spec["managedBy"] = json!(m);
        }
        if self.template_kib > 0 {
            // Size in the template, copied into every pod: what a Job author may write.
            let note = "x".repeat(self.template_kib as usize * 1024);
            spec["template"]["metadata"]["annotations"] =
                json!({ "jobkeeper.dev/bench-note": note });
        }
        serde_json::from_value(json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": format!("{}-{index:05}", self.name),
                "labels": { BENCH_LABEL: self.name }
            },
            "spec": spec
        }))
        .expect("a valid Job")
    }
}
