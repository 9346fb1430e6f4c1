//! Cases: see tests/bad_input.rs. Writes the cluster refuses or races: pod creates a quota,
//! pod validation or an admission policy rejects; Jobs and namespaces deleted under the
//! controller (while it runs, mid-sync, or while it is down); pods another controller
//! owns; a tracking finalizer removed by hand.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::support::*;

const FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// A bad case's namespace and, beside it, a healthy one; one controller watches both.
struct Case {
    bad: TestEnv,
    healthy: TestEnv,
}

impl Case {
    async fn new(name: &str) -> Case {
        Self::with_flags(name, &[]).await
    }

    async fn with_flags(name: &str, flags: &[&str]) -> Case {
        let mut bad = TestEnv::without_controller(name).await;
        let healthy = TestEnv::without_controller(&format!("{name}-ok")).await;
        bad.controller = Some(Controller::start(
            &format!("{},{}", bad.ns, healthy.ns),
            flags,
        ));
        Case { bad, healthy }
    }

    fn controller(&self) -> &Controller {
        self.bad.controller()
    }

    /// The controller is up and healthy, and a Job next to the bad one runs to Complete.
    async fn assert_healthy_job_completes(&self) {
        let env = &self.healthy;
        let name = format!("healthy-{}", rand_name());
        let mut job = driven_job(&name, Some(MANAGED_BY));
        job.spec.as_mut().unwrap().completions = Some(2);
        env.create_job(&job).await;
        for pod in env.wait_active(&name, 1).await {
            env.succeed(&pod).await;
        }
        let left = env
            .wait_status(&name, "one counted", |s| s.succeeded == Some(1))
            .await;
        assert_eq!(left.failed, None);
        for pod in env.wait_active(&name, 1).await {
            env.succeed(&pod).await;
        }
        let status = env
            .wait_status(&name, "Complete, counted", |s| {
                finished_and_counted(s, "Complete")
            })
            .await;
        assert_eq!((status.succeeded, status.failed), (Some(2), None));
        self.assert_alive().await;
    }

    async fn assert_alive(&self) {
        let health = http_get(self.controller().health_port, "/healthz").await;
        assert!(
            health
                .as_deref()
                .is_some_and(|h| h.starts_with("HTTP/1.0 200") || h.starts_with("HTTP/1.1 200")),
            "the controller is not healthy: {health:?}; log: {}",
            self.controller().log.display()
        );
    }

    /// Pod create calls so far (all namespaces of this controller).
    async fn pod_creates(&self) -> f64 {
        self.controller()
            .counter(
                "jobkeeper_kube_api_requests_total",
                &[("verb", "create"), ("resource", "pods")],
            )
            .await
    }

    async fn syncs(&self) -> f64 {
        self.controller()
            .counter("jobkeeper_job_syncs_total", &[])
            .await
    }
}

fn rand_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    format!("{:05x}", h.finish() & 0xf_ffff)
}

fn holds_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == FINALIZER)
}

/// Waits for an event of `reason` on the Job `job` whose note contains `note`.
async fn wait_event(env: &TestEnv, job: &str, reason: &str, note: &str) -> Event {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    wait_for(
        &format!("a {reason} event on {job} saying {note:?}"),
        Duration::from_secs(30),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(job)
                    && e.note.as_deref().is_some_and(|n| n.contains(note))
            })
        },
    )
    .await
}

/// Waits until the log has a line containing every one of `parts`.
async fn wait_log(controller: &Controller, parts: &[&str]) {
    wait_for(
        &format!("a log line with {parts:?}"),
        Duration::from_secs(30),
        || async {
            controller
                .log_text()
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
                .then_some(())
        },
    )
    .await
}

/// Waits until every pod of `job` has lost the tracking finalizer (or is gone).
async fn wait_no_finalizer(env: &TestEnv, job: &str, timeout: Duration) {
    wait_for(
        &format!("no pod of {job} holding the tracking finalizer"),
        timeout,
        || async {
            env.pods_of(job)
                .await
                .iter()
                .all(|p| !holds_finalizer(p))
                .then_some(())
        },
    )
    .await
}

fn job_of(name: &str, completions: i32, parallelism: i32) -> Job {
    let mut job = driven_job(name, Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    spec.completions = Some(completions);
    spec.parallelism = Some(parallelism);
    job
}

// ---- a ResourceQuota rejects creates ------------------------------------------------------

/// A quota on the number of pod objects (`count/pods` counts finished pods too, so the
/// quota stays full while the pods the test drives finish).
async fn pod_quota(env: &TestEnv, pods: u32) {
    let quotas: Api<ResourceQuota> = Api::namespaced(env.client.clone(), &env.ns);
    let quota: ResourceQuota = from_json(json!({
        "metadata": {"name": "pods"},
        "spec": {"hard": {"count/pods": pods.to_string()}},
    }));
    match quotas.get_opt("pods").await.expect("reading the quota") {
        None => {
            quotas
                .create(&PostParams::default(), &quota)
                .await
                .expect("creating the quota");
        }
        Some(_) => {
            quotas
                .patch(
                    "pods",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"hard": {"count/pods": pods.to_string()}}})),
                )
                .await
                .expect("raising the quota");
        }
    }
    // The quota admission refuses every pod until the quota controller has filled in the
    // status for the new spec.
    let want = pods.to_string();
    wait_for("the quota's status", Duration::from_secs(30), || async {
        let q = quotas.get("pods").await.ok()?;
        let hard = q.status?.hard?;
        (hard.get("count/pods").map(|q| q.0.as_str()) == Some(want.as_str())).then_some(())
    })
    .await;
}

/// Pods finish while every create is refused by a ResourceQuota: they are counted and lose
/// their finalizer all the same (upstream's manageJob: active minus the pods not created,
/// status still written); once the quota is raised the Job completes with exact counts.
#[tokio::test]
async fn resource_quota_refuses_creates_finished_pods_still_counted() {
    let case = Case::new("quota").await;
    let env = &case.bad;
    pod_quota(env, 2).await;
    env.create_job(&job_of("capped", 4, 3)).await;
    let pods = env.wait_active("capped", 2).await;
    wait_event(env, "capped", "FailedCreate", "exceeded quota").await;
    wait_log(case.controller(), &["job=", "capped", "exceeded quota"]).await;
    let status = env
        .wait_status(
            "capped",
            "active=2 (the pod not created is not active)",
            |s| s.active == Some(2),
        )
        .await;
    assert_eq!(status.succeeded, None);

    for (n, pod) in pods.iter().enumerate() {
        env.succeed(pod).await;
        let want = Some(n as i32 + 1);
        env.wait_status("capped", "the finished pod counted", |s| {
            s.succeeded == want
        })
        .await;
    }
    wait_no_finalizer(env, "capped", Duration::from_secs(30)).await;
    let status = env.status("capped").await;
    assert_eq!((status.active, status.failed), (None, None));
    assert!(!has_condition(&status, "Complete"));

    // Still refused, retried with backoff: a few creates while the healthy Job runs.
    let (creates, syncs) = (case.pod_creates().await, case.syncs().await);
    case.assert_healthy_job_completes().await;
    let (more_creates, more_syncs) = (
        case.pod_creates().await - creates,
        case.syncs().await - syncs,
    );
    // The healthy Job's 2 pods, and at most a handful of refused retries.
    assert!(
        more_creates <= 8.0,
        "{more_creates} pod creates: a hot loop?"
    );
    assert!(more_syncs <= 30.0, "{more_syncs} syncs: a hot loop?");

    pod_quota(env, 10).await;
    let pods = wait_for(
        "the 2 missing pods once the quota allows them (after the error backoff)",
        Duration::from_secs(120),
        || async {
            let pods = env.active_pods("capped").await;
            (pods.len() == 2).then_some(pods)
        },
    )
    .await;
    for pod in &pods {
        env.succeed(pod).await;
    }
    let status = env
        .wait_status("capped", "Complete, counted", |s| {
            finished_and_counted(s, "Complete")
        })
        .await;
    assert_eq!(
        (status.succeeded, status.failed, status.active),
        (Some(4), None, None)
    );
    assert_eq!(
        env.pods_of("capped").await.len(),
        4,
        "one pod per completion"
    );
    wait_no_finalizer(env, "capped", Duration::from_secs(30)).await;
    env.assert_no_rejected_status().await;
    case.assert_alive().await;
}
