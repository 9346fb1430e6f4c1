//! Cases: see tests/bad_input.rs. Values at the limits the API allows, in the Job and its
//! pods: each used to panic a sync (and a reconcile panic ends the process).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::support::*;

/// The process still serves /healthz (a panic in a sync would have ended it).
async fn assert_alive(env: &TestEnv) {
    let port = env.controller().health_port;
    wait_for("/healthz", Duration::from_secs(10), || async {
        http_get(port, "/healthz").await
    })
    .await;
}

/// A plain Job of one pod next to the bad one, run to completion by the test.
async fn healthy_job_completes(env: &TestEnv) {
    env.create_job(&driven_job("healthy", Some(MANAGED_BY)))
        .await;
    let pods = env.wait_active("healthy", 1).await;
    env.succeed(&pods[0]).await;
    let status = env.wait_condition("healthy", "Complete").await;
    assert_eq!(status.succeeded, Some(1));
}

/// Job syncs so far: a hot loop shows as a count that keeps climbing.
async fn syncs(env: &TestEnv) -> f64 {
    env.controller()
        .counter("jobkeeper_job_syncs_total", &[])
        .await
}

/// Puts an unscheduled pod on a node that does not exist: no kubelet (or kwok) touches
/// it, and its deletion is graceful (an unscheduled pod is deleted at once).
async fn bind_nowhere(env: &TestEnv, pod: &Pod) {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name_any()),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some("nowhere".into()),
            ..Default::default()
        },
    };
    let url = format!(
        "/api/v1/namespaces/{}/pods/{}/binding",
        env.ns,
        pod.name_any()
    );
    let body = serde_json::to_vec(&binding).expect("binding json");
    let request = http::Request::post(url)
        .header("Content-Type", "application/json")
        .body(body)
        .expect("binding request");
    let _: serde_json::Value = env
        .client
        .request(request)
        .await
        .expect("binding the pod to a node");
}

/// terminationGracePeriodSeconds near int64's limit: deleting the pod gives it a
/// deletionGracePeriodSeconds the finish-time arithmetic (deletion − grace) overflowed on.
/// The pod counts as failed, is replaced, and the process lives on.
#[tokio::test]
async fn a_pod_deleted_with_a_grace_period_near_the_int64_limit() {
    let env = TestEnv::new("huge-grace").await;
    let mut job = driven_job("huge-grace", Some(MANAGED_BY));
    let pod_spec = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    pod_spec.termination_grace_period_seconds = Some(i64::MAX / 2);
    env.create_job(&job).await;
    let pods = env.wait_active("huge-grace", 1).await;
    bind_nowhere(&env, &pods[0]).await;
    env.set_running(&pods[0]).await;
    env.pods()
        .delete(&pods[0].name_any(), &DeleteParams::default())
        .await
        .expect("deleting the pod");
    let deleted: Pod = env.pods().get(&pods[0].name_any()).await.expect("the pod");
    assert!(deleted.metadata.deletion_grace_period_seconds.unwrap_or(0) > 1 << 40);
    // Counted as failed (deleted before it succeeded) and replaced.
    let status = env
        .wait_status("huge-grace", "the deleted pod counted as failed", |s| {
            s.failed == Some(1) && s.active == Some(1)
        })
        .await;
    assert_eq!(status.succeeded, None);
    let before = syncs(&env).await;
    assert_alive(&env).await;
    healthy_job_completes(&env).await;
    assert_alive(&env).await;
    let log = env.controller().log_text();
    assert!(log.contains("huge-grace"), "the Job's decisions are logged");
    assert!(!log.contains("panicked"), "{log}");
    // Nothing spins on the terminating pod: a handful of syncs for the healthy Job.
    assert!(syncs(&env).await - before < 50.0);
    env.assert_no_rejected_status().await;
}

/// activeDeadlineSeconds at int64's limit with a startTime ahead of the controller's clock
/// (another writer's): the time left (deadline − elapsed) overflowed. A deadline after
/// year 9999 is no deadline: the Job runs on and completes.
#[tokio::test]
async fn an_active_deadline_near_the_int64_limit_with_a_start_time_ahead() {
    let mut env = TestEnv::without_controller("huge-deadline").await;
    let mut job = driven_job("huge-deadline", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().active_deadline_seconds = Some(i64::MAX);
    env.create_job(&job).await;
    let ahead = Timestamp::now() + SignedDuration::from_hours(1);
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = env.jobs();
    jobs.patch_status(
        "huge-deadline",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"startTime": ahead.to_string()}})),
    )
    .await
    .expect("writing a startTime an hour ahead");
    env.controller = Some(Controller::start(&env.ns, &[]));
    let pods = env.wait_active("huge-deadline", 1).await;
    env.set_running(&pods[0]).await;
    assert_alive(&env).await;
    let before = syncs(&env).await;
    healthy_job_completes(&env).await;
    env.succeed(&pods[0]).await;
    let status = env.wait_condition("huge-deadline", "Complete").await;
    assert_eq!(status.succeeded, Some(1));
    assert!(!has_condition(&status, "Failed"));
    assert_alive(&env).await;
    assert!(syncs(&env).await - before < 50.0);
    let log = env.controller().log_text();
    assert!(log.contains("Job completed"), "the completion is logged");
    assert!(!log.contains("panicked"), "{log}");
    env.assert_no_rejected_status().await;
}
