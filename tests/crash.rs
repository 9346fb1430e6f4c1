//! Crash safety: the controller is SIGKILLed at the moments that matter — after finished
//! pods were recorded in uncountedTerminatedPods, after some of their finalizers went but
//! before they were counted, and while creating pods — then restarted. Counts must come
//! out exact, no pod may be created twice, and no pod may keep the tracking finalizer.

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::JobStatus;
use kube::ResourceExt;
use support::*;

const FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// A controller throttled to 5 requests/s, so the steps of one sync are seconds apart and
/// a kill lands between them.
fn slow_controller(ns: &str) -> Controller {
    Controller::start(ns, &["--kube-api-qps", "5", "--kube-api-burst", "1"])
}

fn uncounted(status: &JobStatus) -> Vec<String> {
    status
        .uncounted_terminated_pods
        .as_ref()
        .map(|u| {
            let mut all = u.succeeded.clone().unwrap_or_default();
            all.extend(u.failed.clone().unwrap_or_default());
            all
        })
        .unwrap_or_default()
}

async fn finish_after_restart(env: &mut TestEnv, job: &str, succeeded: i32, failed: Option<i32>) {
    env.controller = Some(Controller::start(&env.ns, &[]));
    let status = env.wait_condition(job, "Complete").await;
    assert_eq!(
        (status.succeeded, status.failed),
        (Some(succeeded), failed),
        "exact counts after the crash"
    );
    assert!(uncounted(&status).is_empty());
    wait_for(
        "no pod holding the tracking finalizer",
        Duration::from_secs(30),
        || async {
            let holding = env
                .pods_of(job)
                .await
                .iter()
                .filter(|p| p.finalizers().iter().any(|f| f == FINALIZER))
                .count();
            (holding == 0).then_some(())
        },
    )
    .await;
    env.assert_no_rejected_status().await;
}

fn job(name: &str, n: i32) -> k8s_openapi::api::batch::v1::Job {
    let mut job = driven_job(name, Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(n);
    job.spec.as_mut().unwrap().completions = Some(n);
    job
}

#[tokio::test]
async fn killed_after_recording_uncounted_pods() {
    let mut env = TestEnv::without_controller("crash-recorded").await;
    env.controller = Some(slow_controller(&env.ns));
    env.create_job(&job("rec", 6)).await;
    let pods = env.wait_active("rec", 6).await;
    env.wait_status("rec", "active=6", |s| s.active == Some(6))
        .await;
    for pod in &pods[..5] {
        env.succeed(pod).await;
    }
    env.fail(&pods[5], 2).await;
    let recorded = env
        .wait_status("rec", "finished pods recorded as uncounted", |s| {
            !uncounted(s).is_empty()
        })
        .await;
    env.controller.as_mut().unwrap().kill();
    // The kill landed inside the window: recorded, not yet all counted.
    let counted = recorded.succeeded.unwrap_or(0) + recorded.failed.unwrap_or(0);
    assert!(
        counted < 6,
        "killed too late to test anything: {recorded:?}"
    );
    // The replacement for the failed pod comes after the backoff; let it succeed.
    env.controller = Some(Controller::start(&env.ns, &[]));
    let replacement = env.wait_active("rec", 1).await;
    env.controller.as_mut().unwrap().kill();
    env.succeed(&replacement[0]).await;
    finish_after_restart(&mut env, "rec", 6, Some(1)).await;
}

#[tokio::test]
async fn killed_after_removing_some_finalizers_before_counting() {
    let mut env = TestEnv::without_controller("crash-finalizers").await;
    env.controller = Some(slow_controller(&env.ns));
    env.create_job(&job("fin", 8)).await;
    let pods = env.wait_active("fin", 8).await;
    env.wait_status("fin", "active=8", |s| s.active == Some(8))
        .await;
    for pod in &pods {
        env.succeed(pod).await;
    }
    // Wait until some recorded pods lost their finalizer while still uncounted.
    let uids = wait_for(
        "a recorded pod without its finalizer",
        Duration::from_secs(60),
        || async {
            let status = env.status("fin").await;
            let recorded = uncounted(&status);
            if recorded.is_empty() {
                return None;
            }
            let pods = env.pods_of("fin").await;
            let released = pods
                .iter()
                .filter(|p| recorded.contains(&p.uid().unwrap_or_default()))
                .filter(|p| !p.finalizers().iter().any(|f| f == FINALIZER))
                .count();
            (released > 0).then_some(recorded)
        },
    )
    .await;
    env.controller.as_mut().unwrap().kill();
    assert!(!uids.is_empty());
    let at_kill = env.status("fin").await;
    assert!(
        at_kill.succeeded.unwrap_or(0) < 8,
        "killed too late to test anything"
    );
    finish_after_restart(&mut env, "fin", 8, None).await;
}

#[tokio::test]
async fn killed_while_creating_pods_creates_none_twice() {
    let mut env = TestEnv::without_controller("crash-create").await;
    env.controller = Some(slow_controller(&env.ns));
    env.create_job(&job("mk", 10)).await;
    // Some pods exist, not all: the controller is mid-way through its slow start.
    wait_for("a few pods created", Duration::from_secs(30), || async {
        let n = env.pods_of("mk").await.len();
        (2..10).contains(&n).then_some(())
    })
    .await;
    env.controller.as_mut().unwrap().kill();
    env.controller = Some(Controller::start(&env.ns, &[]));
    let pods = env.wait_active("mk", 10).await;
    env.wait_status("mk", "active=10", |s| s.active == Some(10))
        .await;
    assert_eq!(env.pods_of("mk").await.len(), 10, "no pod created twice");
    env.controller.as_mut().unwrap().kill();
    for pod in &pods {
        env.succeed(pod).await;
    }
    finish_after_restart(&mut env, "mk", 10, None).await;
}

/// The controller releases an excess pod (its tracking finalizer removed, marked
/// `jobkeeper.dev/released-for-deletion` in the same write) and dies before deleting it;
/// the pod then succeeds. The restarted controller puts the finalizer back, counts the
/// success and runs no replacement. Before, the success went uncounted and a replacement
/// pod was created (here it would never finish, and the Job never complete).
#[tokio::test]
async fn a_pod_released_for_deletion_that_succeeded_before_its_delete_counts() {
    let mut env = TestEnv::new("crash-released").await;
    env.create_job(&job("released", 1)).await;
    let pod = env.wait_active("released", 1).await.remove(0);
    env.controller.take().expect("a controller").kill();
    let release = serde_json::json!({"metadata": {
        "$deleteFromPrimitiveList/finalizers": [FINALIZER],
        "annotations": {"jobkeeper.dev/released-for-deletion": "true"},
    }});
    env.pods()
        .patch(
            &pod.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(release),
        )
        .await
        .expect("releasing the pod");
    env.succeed(&pod).await;
    finish_after_restart(&mut env, "released", 1, None).await;
    let pods = env.pods_of("released").await;
    assert_eq!(pods.len(), 1, "no replacement pod");
    assert!(
        !pods[0]
            .annotations()
            .contains_key("jobkeeper.dev/released-for-deletion"),
        "the mark goes with the restore"
    );
}
