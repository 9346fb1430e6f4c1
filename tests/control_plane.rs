//! Proves the local control plane is the real thing: versions, the built-in job
//! controller, the apiserver's Job status validation, the garbage collector, and RBAC.

mod support;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::JobStatus;
use kube::api::PostParams;
use kube::{Api, Client};
use support::*;

#[tokio::test]
async fn apiserver_reports_the_pinned_version() {
    let client = admin_client().await;
    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(version.git_version, "v1.37.2");
}

#[tokio::test]
async fn built_in_job_controller_creates_pods_for_jobs_without_managed_by() {
    let env = TestEnv::without_controller("builtin").await;
    let mut job = driven_job("plain", None);
    job.spec.as_mut().unwrap().parallelism = Some(2);
    job.spec.as_mut().unwrap().completions = Some(2);
    env.create_job(&job).await;
    let pods = env.wait_active("plain", 2).await;
    assert!(pods.iter().all(|p| {
        p.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.contains(&"batch.kubernetes.io/job-tracking".to_string()))
    }));
    env.wait_status("plain", "active=2", |s| s.active == Some(2))
        .await;
}

#[tokio::test]
async fn built_in_job_controller_skips_jobs_managed_by_another_controller() {
    let env = TestEnv::without_controller("skipped").await;
    env.create_job(&driven_job("ours", Some(MANAGED_BY))).await;
    // A Job the built-in controller does own, created after ours, gets pods: once it has
    // them, the built-in controller has had its chance at ours too.
    env.create_job(&driven_job("theirs", None)).await;
    env.wait_active("theirs", 1).await;
    assert!(env.pods_of("ours").await.is_empty());
    assert_eq!(
        env.job("ours").await.status.unwrap_or_default(),
        JobStatus::default()
    );
}

#[tokio::test]
async fn status_validation_rejects_ready_above_active_for_managed_jobs() {
    let env = TestEnv::without_controller("validation").await;
    let mut job = env
        .create_job(&driven_job("strict", Some(MANAGED_BY)))
        .await;
    job.status = Some(JobStatus {
        active: Some(1),
        ready: Some(2),
        ..Default::default()
    });
    let err = env
        .jobs()
        .replace_status("strict", &PostParams::default(), &job)
        .await
        .expect_err("ready > active must be rejected");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("ready"), "{}", status.message);
        }
        other => panic!("unexpected error {other:?}"),
    }
    // The same write with ready ≤ active passes: the rejection was about the rule.
    let mut job = env.job("strict").await;
    job.status = Some(JobStatus {
        active: Some(1),
        ready: Some(1),
        ..Default::default()
    });
    env.jobs()
        .replace_status("strict", &PostParams::default(), &job)
        .await
        .expect("a valid status is accepted");
}

#[tokio::test]
async fn garbage_collector_deletes_pods_of_a_deleted_job() {
    let env = TestEnv::without_controller("gc").await;
    env.create_job(&driven_job("doomed", None)).await;
    env.wait_active("doomed", 1).await;
    env.delete_job_and_wait_for_its_pods("doomed").await;
}

async fn can(client: &Client, verb: &str, group: &str, resource: &str, sub: Option<&str>) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: sub.map(Into::into),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let out = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview");
    out.status.expect("review status").allowed
}

#[tokio::test]
async fn controller_identity_has_exactly_the_access_it_needs() {
    let client = client_for(&cluster_dir().join("jobkeeper.kubeconfig")).await;
    for (verb, group, resource, sub) in [
        ("list", "batch", "jobs", None),
        ("watch", "batch", "jobs", None),
        ("get", "batch", "jobs", None),
        ("update", "batch", "jobs", Some("status")),
        ("get", "", "pods", None),
        ("create", "", "pods", None),
        ("delete", "", "pods", None),
        ("patch", "", "pods", None),
        ("watch", "", "pods", None),
        ("create", "events.k8s.io", "events", None),
    ] {
        assert!(
            can(&client, verb, group, resource, sub).await,
            "cannot {verb} {resource} {sub:?}"
        );
    }
    for (verb, group, resource, sub) in [
        ("get", "", "secrets", None),
        ("list", "", "secrets", None),
        ("update", "batch", "jobs", None),
        ("patch", "batch", "jobs", None),
        ("create", "batch", "jobs", None),
        ("delete", "batch", "jobs", None),
        ("update", "", "pods", Some("status")),
    ] {
        assert!(
            !can(&client, verb, group, resource, sub).await,
            "can {verb} {resource} {sub:?}"
        );
    }
}

/// kwok's stages honour a pod's `jobkeeper.dev/run-ms`: the pod is still Running well
/// into its run time and finishes only after it (the default run is 1 s).
#[tokio::test]
async fn kwok_pod_runs_for_its_run_ms_annotation() {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kube::ResourceExt;

    const RUN_MS: i64 = 6000;
    let env = TestEnv::without_controller("run-ms").await;
    let mut job = kwok_job("long", None);
    job.spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .as_mut()
        .unwrap()
        .annotations = Some(BTreeMap::from([(
        "jobkeeper.dev/run-ms".to_string(),
        RUN_MS.to_string(),
    )]));
    env.create_job(&job).await;
    let phase = |p: &k8s_openapi::api::core::v1::Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    let started = |p: &k8s_openapi::api::core::v1::Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .map(|t| t.0)
    };
    let pod = wait_for("the pod Running", Duration::from_secs(30), || async {
        env.pods_of("long")
            .await
            .into_iter()
            .find(|p| phase(p) == "Running" && started(p).is_some())
    })
    .await;
    let start = started(&pod).unwrap();
    // Half-way through its run time (by kwok's clock, which is this machine's), it runs.
    let halfway = start + SignedDuration::from_millis(RUN_MS / 2);
    let seen = wait_for("half of the run time", Duration::from_secs(30), || async {
        if Timestamp::now() < halfway {
            return None;
        }
        Some(
            env.pods()
                .get(&pod.name_any())
                .await
                .expect("reading the pod"),
        )
    })
    .await;
    assert_eq!(
        phase(&seen),
        "Running",
        "the pod finished before its run-ms"
    );
    let done = wait_for("the pod Succeeded", Duration::from_secs(30), || async {
        let now = env
            .pods()
            .get(&pod.name_any())
            .await
            .expect("reading the pod");
        (phase(&now) == "Succeeded").then_some(now)
    })
    .await;
    let finished = done
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .and_then(|t| t.finished_at)
        .expect("the container's finishedAt")
        .0;
    // Timestamps are whole seconds: allow one for the truncation.
    let ran = finished.duration_since(start);
    assert!(
        ran >= SignedDuration::from_millis(RUN_MS - 1000),
        "the pod ran {ran:?}, not its {RUN_MS} ms"
    );
}
