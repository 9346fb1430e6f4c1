//! Differential testing: the same Job twice in one namespace — `<name>-ours` with our
//! managedBy and `<name>-ref` for the built-in job controller — the same pod outcomes
//! driven on both, and statuses compared field by field (timestamps and names aside).

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::shared::mask_pod_names;
use super::*;

/// A pair of identical Jobs: `<name>-ours` (jobkeeper) and `<name>-ref` (built-in).
pub struct Twins<'a> {
    pub env: &'a TestEnv,
    pub names: [String; 2],
}

/// What the driver does to a pod.
#[derive(Clone, Copy)]
pub enum Outcome {
    Ready,
    Succeed,
    Fail(i32),
    /// Failed with the exit code and one extra pod condition (type, reason), e.g. a
    /// `DisruptionTarget` the way the kubelet reports an evicted pod.
    FailWithCondition(i32, &'static str, &'static str),
}

/// Applies `outcome` to `pod` through the pod driver.
pub async fn drive(env: &TestEnv, pod: &Pod, outcome: Outcome) {
    match outcome {
        Outcome::Ready => env.set_ready(pod).await,
        Outcome::Succeed => env.succeed(pod).await,
        Outcome::Fail(code) => env.fail(pod, code).await,
        Outcome::FailWithCondition(code, type_, reason) => {
            env.fail_with_conditions(pod, code, &[(type_, reason)])
                .await
        }
    }
}

/// Picks every pod.
pub fn all(_: usize, _: &Pod) -> bool {
    true
}

impl<'a> Twins<'a> {
    /// Twins built from [`driven_job`]: the test steers every pod.
    pub async fn create(env: &'a TestEnv, name: &str, shape: impl Fn(&mut Job)) -> Twins<'a> {
        Self::create_from(env, name, driven_job, shape).await
    }

    /// Twins built from `base` (e.g. [`kwok_job`], or a closure over
    /// [`real_job`](super::real::real_job)), then shaped.
    pub async fn create_from(
        env: &'a TestEnv,
        name: &str,
        base: impl Fn(&str, Option<&str>) -> Job,
        shape: impl Fn(&mut Job),
    ) -> Twins<'a> {
        let names = [format!("{name}-ours"), format!("{name}-ref")];
        for (job_name, managed_by) in names.iter().zip([Some(env.managed_by), None]) {
            let mut job = base(job_name, managed_by);
            shape(&mut job);
            env.create_job(&job).await;
        }
        Twins { env, names }
    }

    /// Waits until both Jobs have `n` active pods; returns them per Job.
    pub async fn active(&self, n: usize) -> [Vec<Pod>; 2] {
        [
            self.env.wait_active(&self.names[0], n).await,
            self.env.wait_active(&self.names[1], n).await,
        ]
    }

    pub async fn each_pod(
        &self,
        pods: &[Vec<Pod>; 2],
        pick: impl Fn(usize, &Pod) -> bool,
        outcome: Outcome,
    ) {
        for job_pods in pods {
            for (i, pod) in job_pods.iter().enumerate() {
                if pick(i, pod) {
                    drive(self.env, pod, outcome).await;
                }
            }
        }
    }

    pub async fn wait_both(
        &self,
        what: &str,
        check: impl Fn(&JobStatus) -> bool + Copy,
    ) -> [JobStatus; 2] {
        [
            self.env.wait_status(&self.names[0], what, check).await,
            self.env.wait_status(&self.names[1], what, check).await,
        ]
    }

    /// Waits for `check` on both and asserts the statuses match at that point.
    pub async fn assert_same_when(
        &self,
        what: &str,
        check: impl Fn(&JobStatus) -> bool + Copy,
    ) -> [JobStatus; 2] {
        let [ours, reference] = self.wait_both(what, check).await;
        assert_eq!(
            self.comparable(0, &ours),
            self.comparable(1, &reference),
            "at \"{what}\", jobkeeper's status (left) differs from the built-in controller's (right)"
        );
        [ours, reference]
    }

    /// Polls both Jobs for `duration` and panics as soon as `invariant` fails for either:
    /// the way to show something does *not* happen (e.g. no replacement pod appears).
    pub async fn assert_stays(
        &self,
        what: &str,
        duration: Duration,
        invariant: impl AsyncFn(&str) -> bool,
    ) {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            for name in &self.names {
                assert!(invariant(name).await, "{name}: {what} stopped holding");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn patch_spec(&self, spec: serde_json::Value) {
        for name in &self.names {
            self.env
                .jobs()
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": spec })),
                )
                .await
                .expect("patching the Job spec");
        }
    }

    /// Deletes the pods (the apiserver sets deletionTimestamp; a pod holding another
    /// finalizer stays, terminating).
    pub async fn delete_pods(&self, pods: &[Vec<Pod>; 2], grace_seconds: u32) {
        for pod in pods.iter().flatten() {
            self.env
                .pods()
                .delete(
                    &pod.name_any(),
                    &DeleteParams {
                        grace_period_seconds: Some(grace_seconds),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("deleting pod {}: {e}", pod.name_any()));
        }
    }

    /// The status fields that must match, with the Job's own pod names in condition
    /// messages replaced by `<pod>` (the twins' pods differ in name only).
    pub fn comparable(&self, which: usize, status: &JobStatus) -> serde_json::Value {
        let mut value = comparable(status);
        if let Some(conditions) = value.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for c in conditions {
                if let Some(message) = c.get("message").and_then(|m| m.as_str()) {
                    let m = mask_pod_names(message, &self.names[which]);
                    c["message"] = json!(m);
                }
            }
        }
        value
    }

    /// Waits for `condition` on both, then asserts the statuses match field by field and
    /// no pod is left holding the tracking finalizer.
    pub async fn assert_same_end(&self, condition: &str) -> JobStatus {
        let [ours, _] = self
            .assert_same_when(&format!("{condition} with nothing uncounted"), |s| {
                finished_and_counted(s, condition)
            })
            .await;
        for name in &self.names {
            wait_no_tracking_finalizer(self.env, name).await;
        }
        self.env.assert_no_rejected_status().await;
        ours
    }
}

/// Waits until no pod of the Job holds the tracking finalizer.
pub async fn wait_no_tracking_finalizer(env: &TestEnv, job: &str) {
    wait_for(
        &format!("{job}: no pod holds the tracking finalizer"),
        Duration::from_secs(30),
        || async {
            let holding =
                env.pods_of(job)
                    .await
                    .iter()
                    .filter(|p| {
                        p.metadata.finalizers.as_ref().is_some_and(|f| {
                            f.iter().any(|f| f == "batch.kubernetes.io/job-tracking")
                        })
                    })
                    .count();
            (holding == 0).then_some(())
        },
    )
    .await;
}
