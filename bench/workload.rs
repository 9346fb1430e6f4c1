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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// Bare pods no Job owns, running on the fake node in a namespace of their own while
    /// every side runs this workload.
    #[serde(default)]
    pub foreign_pods: u32,
    /// Runs only on clusters whose client QPS is at least this (0: every limit).
    #[serde(default)]
    pub min_qps: f64,
    /// Gives up on one run after this many seconds; None: --timeout-s.
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

fn scaled(n: u32, scale: f64) -> u32 {
    ((f64::from(n) * scale).round() as u32).max(1)
}

impl Workload {
    pub fn from_args(name: &str, a: &Args) -> anyhow::Result<Workload> {
        let s = a.scale;
        let w = match name {
            "paced" => Workload {
                jobs: scaled(a.paced_jobs, s),
                create_rate: Some(a.paced_rate),
                ..Workload::plain()
            },
            "small" => Workload {
                jobs: scaled(a.small_jobs, s),
                ..Workload::plain()
            },
            "wide" => Workload {
                jobs: scaled(a.wide_jobs, s),
                parallelism: a.wide_parallelism,
                completions: a.wide_completions,
                fail_per_job: (f64::from(a.wide_completions) * a.wide_fail_percent / 100.0).round()
                    as u32,
                ..Workload::plain()
            },
            "indexed" => Workload {
                parallelism: scaled(a.indexed_parallelism, s),
                completions: scaled(a.indexed_completions, s),
                indexed: true,
                ..Workload::plain()
            },
            "fat" => Workload {
                jobs: scaled(a.fat_jobs, s),
                parallelism: scaled(a.fat_parallelism, s),
                completions: scaled(a.fat_completions, s),
                template_kib: a.fat_template_kib,
                ..Workload::plain()
            },
            "small-foreign" => Workload {
                foreign_pods: scaled(a.foreign_pods, s),
                ..Workload::from_args("small", a)?
            },
            "indexed-huge" => Workload {
                parallelism: scaled(a.indexed_huge_parallelism, s),
                completions: scaled(a.indexed_huge_completions, s),
                indexed: true,
                min_qps: a.indexed_huge_min_qps,
                timeout_s: Some(a.indexed_huge_timeout_s),
                ..Workload::plain()
            },
            other => {
                anyhow::bail!(
                    "unknown workload {other:?} (paced, small, small-foreign, wide, indexed, \
                     indexed-huge, fat)"
                )
            }
        };
        Ok(Workload {
            name: name.into(),
            ..w
        })
    }

    /// One 1-pod Job and nothing else: the base each workload above changes.
    fn plain() -> Workload {
        Workload {
            jobs: 1,
            parallelism: 1,
            completions: 1,
            ..Workload::default()
        }
    }

    /// Whether this workload runs on a cluster with this client QPS.
    pub fn runs_at(&self, qps: f64) -> bool {
        qps >= self.min_qps
    }

    /// How long one run may take.
    pub fn timeout(&self, default_s: u64) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_s.unwrap_or(default_s))
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
        if self.foreign_pods > 0 {
            s += &format!(
                ", with {} running pods no Job owns in another namespace",
                self.foreign_pods
            );
        }
        if self.min_qps > 0.0 {
            s += &format!(", only at client limits of {} QPS or more", self.min_qps);
        }
        if let Some(t) = self.timeout_s {
            s += &format!(", {t} s timeout");
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn workload(name: &str, scale: &str) -> Workload {
        let args = Args::parse_from(["jobkeeper-bench", "--scale", scale]);
        Workload::from_args(name, &args).expect("a known workload")
    }

    #[test]
    fn the_default_list_has_every_scale_case_and_each_parses() {
        let args = Args::parse_from(["jobkeeper-bench"]);
        for name in ["small-foreign", "indexed-huge"] {
            assert!(args.workloads.iter().any(|w| w == name), "{name}");
        }
        for name in &args.workloads {
            Workload::from_args(name, &args).expect("a known workload");
        }
        assert!(Workload::from_args("huge", &args).is_err());
    }

    #[test]
    fn indexed_huge_is_100k_by_1000_at_500_qps_or_more_with_an_hour_or_more() {
        let w = workload("indexed-huge", "1");
        assert_eq!((w.jobs, w.completions, w.parallelism), (1, 100_000, 1000));
        assert!(w.indexed);
        assert!(w.runs_at(500.0) && !w.runs_at(20.0) && !w.runs_at(30.0));
        assert!(w.timeout(1800) >= std::time::Duration::from_secs(3600));
        assert_eq!(w.minimum_requests_per_job(), 200_002);
    }

    #[test]
    fn scale_shrinks_the_huge_job_and_the_foreign_pods_but_never_to_zero() {
        let w = workload("indexed-huge", "0.01");
        assert_eq!((w.completions, w.parallelism), (1000, 10));
        let f = workload("small-foreign", "0.01");
        let small = workload("small", "0.01");
        assert_eq!(f.foreign_pods, 500);
        assert_eq!((f.jobs, f.completions), (small.jobs, small.completions));
        assert_eq!(workload("small-foreign", "1").foreign_pods, 50_000);
        assert_eq!(workload("small", "1").foreign_pods, 0);
        assert_eq!(scaled(100_000, 0.000_001), 1);
    }

    #[test]
    fn other_workloads_run_at_every_limit_with_the_default_timeout() {
        for name in ["paced", "small", "small-foreign", "wide", "indexed", "fat"] {
            let w = workload(name, "1");
            assert!(w.runs_at(20.0), "{name}");
            assert_eq!(w.timeout(1800), std::time::Duration::from_secs(1800));
        }
    }
}
