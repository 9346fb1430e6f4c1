//! Real-kubelet semantics kwok cannot show: the Job's pods are busybox containers on the
//! real node (tests/cluster/node-up.sh), whose kubelet reports the exit codes, container
//! restarts and terminations. Each scenario runs as twins — `<name>-ours` (jobkeeper) and
//! `<name>-ref` (the built-in controller) on the same node — and compares their statuses
//! field by field at the interesting moment and at the end.

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use kube::ResourceExt;
use kube::api::EvictParams;
use serde_json::json;
use support::real::{real_job, run_until_term};
use support::twins::*;
use support::*;

const FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
const IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

fn message_of(status: &JobStatus, type_: &str) -> Option<String> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")?
        .message
        .clone()
}

/// Twins running `script` on the real node, then shaped.
async fn real_twins<'a>(
    env: &'a TestEnv,
    name: &str,
    script: &str,
    shape: impl Fn(&mut Job),
) -> Twins<'a> {
    Twins::create_from(env, name, |n, m| real_job(n, m, script), shape).await
}

/// One Indexed pod at a time (completions 1), retried once per index: the replacement pod
/// carries the failure counts of its index in its annotations.
fn one_index_retried_once(j: &mut Job) {
    let s = j.spec.as_mut().unwrap();
    s.completion_mode = Some("Indexed".into());
    s.completions = Some(1);
    s.parallelism = Some(1);
    s.backoff_limit_per_index = Some(1);
    s.pod_replacement_policy = Some("Failed".into());
}

/// Gives the container `var` = the pod's annotation `annotation` (downward API; empty when
/// the pod has no such annotation).
fn env_from_annotation(j: &mut Job, var: &str, annotation: &str) {
    let spec = j.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.containers[0]
        .env
        .get_or_insert_with(Vec::new)
        .push(EnvVar {
            name: var.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{annotation}']"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
}

fn grace(j: &mut Job, seconds: i64) {
    let spec = j.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.termination_grace_period_seconds = Some(seconds);
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

fn has_pod_condition(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

fn nothing_uncounted(s: &JobStatus) -> bool {
    s.uncounted_terminated_pods.as_ref().is_none_or(|u| {
        u.succeeded.as_ref().is_none_or(Vec::is_empty)
            && u.failed.as_ref().is_none_or(Vec::is_empty)
    })
}

/// restartPolicy OnFailure: the kubelet restarts the failing container in place (after 0 s,
/// then 10 s of crash-loop backoff); two restarts reach backoffLimit 2 and the Job fails,
/// its pod deleted.
#[tokio::test]
async fn on_failure_container_restarts_reach_the_backoff_limit() {
    let env = TestEnv::on_real_node("real-onfailure").await;
    let twins = real_twins(&env, "restarts", "exit 1", |j| {
        let s = j.spec.as_mut().unwrap();
        s.backoff_limit = Some(2);
        s.template.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
    })
    .await;
    let end = twins.assert_same_end("Failed").await;
    assert_eq!(
        condition_reason(&end, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    // Its only pod never failed (the kubelet restarted its container in place): it counts
    // as failed once the controller deleted it, so the limit was reached by restarts.
    assert_eq!(end.failed, Some(1));
    assert_eq!(end.active.unwrap_or(0), 0);
    assert_eq!(end.terminating, Some(0));
    assert_eq!(end.succeeded.unwrap_or(0), 0);
}

/// activeDeadlineSeconds: both running containers are stopped; they take 8 s to stop, and
/// while they do the Job reports them as terminating under FailureTarget. Failed comes
/// once they are gone.
#[tokio::test]
async fn active_deadline_stops_running_containers_and_counts_them_terminating() {
    let env = TestEnv::on_real_node("real-deadline").await;
    let twins = real_twins(&env, "deadline", &run_until_term(8, 1), |j| {
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(2);
        s.completions = Some(2);
        s.active_deadline_seconds = Some(5);
        grace(j, 20);
    })
    .await;
    let [ours, _] = twins
        .assert_same_when("FailureTarget with both pods terminating", |s| {
            has_condition(s, "FailureTarget")
                && s.terminating == Some(2)
                && s.active.unwrap_or(0) == 0
                && nothing_uncounted(s)
        })
        .await;
    assert!(
        !has_condition(&ours, "Failed"),
        "Failed before the pods stopped"
    );
    let end = twins.assert_same_end("Failed").await;
    assert_eq!(
        condition_reason(&end, "Failed").as_deref(),
        Some("DeadlineExceeded")
    );
    assert_eq!(end.failed, Some(2));
    assert_eq!(end.active.unwrap_or(0), 0);
    assert_eq!(end.terminating, Some(0));
}

/// A running pod deleted with a 10 s grace period takes 6 s to stop: it is reported as
/// terminating, and under podReplacementPolicy Failed no replacement appears until it has
/// failed. The replacement (its index's failure count is 1) succeeds at once.
#[tokio::test]
async fn deleted_pod_is_terminating_and_replaced_only_once_it_failed() {
    let env = TestEnv::on_real_node("real-deleted").await;
    let script = format!(
        "[ \"${{FAILURES:-0}}\" = 0 ] || exit 0; {}",
        run_until_term(6, 1)
    );
    let twins = real_twins(&env, "deleted", &script, |j| {
        one_index_retried_once(j);
        env_from_annotation(j, "FAILURES", FAILURE_COUNT);
        grace(j, 10);
    })
    .await;
    twins.wait_both("ready=1", |s| s.ready == Some(1)).await;
    let old = twins.active(1).await;
    twins.delete_pods(&old, 10).await;
    twins
        .assert_same_when("terminating=1, active=0", |s| {
            s.terminating == Some(1) && s.active.unwrap_or(0) == 0
        })
        .await;
    // Until the old pod has failed (or is gone), it is the Job's only pod.
    for (name, old) in twins.names.iter().zip(&old) {
        let old_name = old[0].name_any();
        wait_for(
            &format!("{name}: the deleted pod to fail"),
            Duration::from_secs(30),
            || async {
                let pods = env.pods_of(name).await;
                let old_pod = pods.iter().find(|p| p.name_any() == old_name);
                let old_done = old_pod.is_none_or(|p| phase(p) == "Failed");
                assert!(
                    old_done || pods.len() == 1,
                    "{name}: a replacement appeared while {old_name} was terminating: {:?}",
                    pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
                );
                if let Some(p) = old_pod.filter(|_| old_done) {
                    assert_eq!(exit_code(p), Some(1), "{old_name} ran its TERM trap");
                }
                old_done.then_some(())
            },
        )
        .await;
    }
    let end = twins.assert_same_end("Complete").await;
    assert_eq!((end.failed, end.succeeded), (Some(1), Some(1)));
    assert_eq!(end.completed_indexes.as_deref(), Some("0"));
    assert_eq!(end.terminating, Some(0));
}

/// A podFailurePolicy FailJob rule on the real container's exit code 42: the Job fails
/// with reason PodFailurePolicy and a message naming the container and the exit code.
#[tokio::test]
async fn pod_failure_policy_fail_job_on_a_real_exit_code() {
    let env = TestEnv::on_real_node("real-exitcode").await;
    let twins = real_twins(&env, "exitcode", "exit 42", |j| {
        let s = j.spec.as_mut().unwrap();
        s.backoff_limit = Some(6);
        s.pod_failure_policy = Some(from_json(json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
        ]})));
    })
    .await;
    let end = twins.assert_same_end("Failed").await;
    assert_eq!(
        condition_reason(&end, "Failed").as_deref(),
        Some("PodFailurePolicy")
    );
    let message = message_of(&end, "Failed").unwrap_or_default();
    assert!(
        message.contains("main") && message.contains("42"),
        "the message names the container and the exit code: {message}"
    );
    assert_eq!(end.failed, Some(1));
}

/// A running pod evicted through the Eviction API gets DisruptionTarget from the apiserver
/// and is stopped by the kubelet (its TERM trap exits 143). A podFailurePolicy Ignore rule
/// on DisruptionTarget leaves the failure uncounted; the replacement (its index's ignored
/// failure count is 1) succeeds at once, and the Job completes with failed 0.
#[tokio::test]
async fn evicted_pod_failure_is_ignored_by_pod_failure_policy() {
    let env = TestEnv::on_real_node("real-evicted").await;
    let script = format!(
        "[ \"${{IGNORED:-0}}\" = 0 ] || exit 0; {}",
        run_until_term(0, 143)
    );
    let twins = real_twins(&env, "evicted", &script, |j| {
        one_index_retried_once(j);
        env_from_annotation(j, "IGNORED", IGNORED_FAILURE_COUNT);
        grace(j, 10);
        j.spec.as_mut().unwrap().pod_failure_policy = Some(from_json(json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]})));
    })
    .await;
    twins.wait_both("ready=1", |s| s.ready == Some(1)).await;
    let old = twins.active(1).await;
    for pod in old.iter().flatten() {
        env.pods()
            .evict(&pod.name_any(), &EvictParams::default())
            .await
            .unwrap_or_else(|e| panic!("evicting {}: {e}", pod.name_any()));
    }
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.failed.unwrap_or(0), 0, "the evicted pod is not counted");
    assert_eq!(end.succeeded, Some(1));
    assert_eq!(end.completed_indexes.as_deref(), Some("0"));
    // The replacement knew its index's ignored failure; the evicted pod carried
    // DisruptionTarget if it is still around.
    for (name, old) in twins.names.iter().zip(&old) {
        let old_name = old[0].name_any();
        let pods = env.pods_of(name).await;
        for pod in &pods {
            if pod.name_any() == old_name {
                assert!(has_pod_condition(pod, "DisruptionTarget"), "{old_name}");
                continue;
            }
            assert_eq!(phase(pod), "Succeeded", "{}", pod.name_any());
            assert_eq!(
                pod.annotations()
                    .get(IGNORED_FAILURE_COUNT)
                    .map(String::as_str),
                Some("1"),
                "{}",
                pod.name_any()
            );
        }
        assert!(
            pods.iter().any(|p| p.name_any() != old_name),
            "{name}: a replacement ran"
        );
    }
}
