//! Differential scenarios for the Job policies: podFailurePolicy (FailJob, Ignore, Count,
//! FailIndex), backoffLimitPerIndex with maxFailedIndexes, successPolicy, and
//! podReplacementPolicy while pods terminate. Each runs the same Job with our managedBy
//! and with the built-in controller, drives the same pod outcomes on both and compares
//! the statuses field by field, at the end and at the interesting points in between.
//! Also: ttlSecondsAfterFinished for our Jobs, through the cluster's TTL controller.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::twins::*;
use support::*;

/// A finalizer of the test's own that keeps deleted pods terminating until released.
const HOLD: &str = "test.jobkeeper.dev/hold";

fn indexed(j: &mut Job, completions: i32, parallelism: i32) {
    let s = j.spec.as_mut().unwrap();
    s.completion_mode = Some("Indexed".into());
    s.completions = Some(completions);
    s.parallelism = Some(parallelism);
}

fn is_index(ix: u32) -> impl Fn(usize, &Pod) -> bool {
    move |_, p| index_of(p) == Some(ix)
}

/// kwok runs the pods (Running and Ready on a fake node) for ten minutes; they keep the
/// test's hold finalizer, so a deleted pod stays terminating.
fn long_running_held(j: &mut Job) {
    let template = &mut j.spec.as_mut().unwrap().template;
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("jobkeeper.dev/run-ms".into(), "600s".into());
    meta.finalizers = Some(vec![HOLD.into()]);
}

/// Removes the hold finalizer from every pod of the Job (keeping any other finalizer).
async fn release_holds(env: &TestEnv, job: &str) {
    for pod in env.pods_of(job).await {
        let Some(finalizers) = pod.metadata.finalizers.clone() else {
            continue;
        };
        if !finalizers.iter().any(|f| f == HOLD) {
            continue;
        }
        // The resourceVersion makes the patch fail, rather than overwrite, when the
        // controller changed the finalizers in between.
        let kept: Vec<String> = finalizers.iter().filter(|f| *f != HOLD).cloned().collect();
        let patch = json!({"metadata": {
            "finalizers": kept,
            "resourceVersion": pod.resource_version(),
        }});
        if env
            .pods()
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .is_err()
        {
            // Changed under us: read again and retry.
            Box::pin(release_holds(env, job)).await;
            return;
        }
    }
}

#[tokio::test]
async fn pod_failure_policy_fail_job_on_exit_code() {
    let env = TestEnv::new("diffp-failjob").await;
    let twins = Twins::create(&env, "failjob", |j| {
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(2);
        s.completions = Some(4);
        s.pod_failure_policy = Some(from_json(json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
        ]})));
    })
    .await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, all, Outcome::Ready).await;
    twins.wait_both("ready=2", |s| s.ready == Some(2)).await;
    twins
        .each_pod(&pods, |i, _| i == 0, Outcome::Fail(42))
        .await;
    let end = twins.assert_same_end("Failed").await;
    assert_eq!(
        condition_reason(&end, "Failed").as_deref(),
        Some("PodFailurePolicy")
    );
    assert_eq!(
        condition_reason(&end, "FailureTarget").as_deref(),
        Some("PodFailurePolicy")
    );
}

#[tokio::test]
async fn pod_failure_policy_ignores_disruption_target() {
    let env = TestEnv::new("diffp-ignore").await;
    let twins = Twins::create(&env, "ignore", |j| {
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(2);
        s.completions = Some(2);
        // Any counted failure would fail the Job.
        s.backoff_limit = Some(0);
        s.pod_failure_policy = Some(from_json(json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]})));
    })
    .await;
    let pods = twins.active(2).await;
    twins
        .each_pod(
            &pods,
            |i, _| i == 0,
            Outcome::FailWithCondition(137, "DisruptionTarget", "EvictionByEvictionAPI"),
        )
        .await;
    twins.each_pod(&pods, |i, _| i == 1, Outcome::Succeed).await;
    // The ignored failure is replaced, not counted.
    let replacements = twins.active(1).await;
    twins
        .assert_same_when("one succeeded, one replacement active", |s| {
            s.succeeded == Some(1) && s.active == Some(1)
        })
        .await;
    twins.each_pod(&replacements, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.failed.unwrap_or(0), 0);
    assert_eq!(end.succeeded, Some(2));
}

#[tokio::test]
async fn pod_failure_policy_count_rule_matches_before_a_later_fail_job_rule() {
    let env = TestEnv::new("diffp-count").await;
    let twins = Twins::create(&env, "count", |j| {
        let s = j.spec.as_mut().unwrap();
        s.backoff_limit = Some(0);
        s.pod_failure_policy = Some(from_json(json!({"rules": [
            {"action": "Count", "onExitCodes": {"operator": "In", "values": [5]}},
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [5, 6]}},
        ]})));
    })
    .await;
    let pods = twins.active(1).await;
    twins.each_pod(&pods, all, Outcome::Fail(5)).await;
    let end = twins.assert_same_end("Failed").await;
    // Counted towards backoffLimit 0, so the Job fails, but not by the FailJob rule.
    assert_eq!(
        condition_reason(&end, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(end.failed, Some(1));
}

#[tokio::test]
async fn pod_failure_policy_fail_index_with_backoff_limit_per_index() {
    let env = TestEnv::new("diffp-failindex").await;
    let twins = Twins::create(&env, "failix", |j| {
        indexed(j, 3, 3);
        let s = j.spec.as_mut().unwrap();
        s.backoff_limit_per_index = Some(1);
        s.pod_failure_policy = Some(from_json(json!({"rules": [
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}},
        ]})));
    })
    .await;
    let pods = twins.active(3).await;
    // Index 1 fails for good (FailIndex), index 2 fails once (counted, retried), index 0
    // succeeds.
    twins.each_pod(&pods, is_index(1), Outcome::Fail(42)).await;
    twins.each_pod(&pods, is_index(2), Outcome::Fail(1)).await;
    twins.each_pod(&pods, is_index(0), Outcome::Succeed).await;
    twins
        .assert_same_when("index 1 failed, index 0 completed", |s| {
            s.failed_indexes.as_deref() == Some("1")
                && s.completed_indexes.as_deref() == Some("0")
                && s.failed == Some(2)
        })
        .await;
    // Index 2 comes back after the per-index backoff, carrying its failure count.
    let retried = twins.active(1).await;
    for job_pods in &retried {
        let pod = &job_pods[0];
        assert_eq!(index_of(pod), Some(2));
        assert_eq!(
            pod.annotations()
                .get("batch.kubernetes.io/job-index-failure-count")
                .map(String::as_str),
            Some("1"),
            "{}",
            pod.name_any()
        );
    }
    twins.each_pod(&retried, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Failed").await;
    assert_eq!(
        condition_reason(&end, "Failed").as_deref(),
        Some("FailedIndexes")
    );
    assert_eq!(end.completed_indexes.as_deref(), Some("0,2"));
    assert_eq!(end.failed_indexes.as_deref(), Some("1"));
}

#[tokio::test]
async fn max_failed_indexes_exceeded() {
    let env = TestEnv::new("diffp-maxfailed").await;
    let twins = Twins::create(&env, "maxfail", |j| {
        indexed(j, 4, 1);
        let s = j.spec.as_mut().unwrap();
        s.backoff_limit_per_index = Some(0);
        s.max_failed_indexes = Some(1);
    })
    .await;
    let pods = twins.active(1).await;
    twins.each_pod(&pods, is_index(0), Outcome::Fail(1)).await;
    // One failed index is allowed: the next index starts.
    let pods = twins.active(1).await;
    assert!(pods.iter().all(|p| index_of(&p[0]) == Some(1)));
    twins
        .assert_same_when("index 0 failed", |s| {
            s.failed_indexes.as_deref() == Some("0") && s.active == Some(1) && s.failed == Some(1)
        })
        .await;
    twins.each_pod(&pods, all, Outcome::Fail(1)).await;
    let end = twins.assert_same_end("Failed").await;
    assert_eq!(
        condition_reason(&end, "Failed").as_deref(),
        Some("MaxFailedIndexesExceeded")
    );
    assert_eq!(end.failed_indexes.as_deref(), Some("0,1"));
    assert_eq!(end.failed, Some(2));
}

#[tokio::test]
async fn success_policy_succeeded_indexes_with_pending_indexes() {
    let env = TestEnv::new("diffp-spindexes").await;
    let twins = Twins::create(&env, "spix", |j| {
        indexed(j, 5, 2);
        j.spec.as_mut().unwrap().success_policy =
            Some(from_json(json!({"rules": [{"succeededIndexes": "0"}]})));
    })
    .await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, is_index(1), Outcome::Ready).await;
    twins.each_pod(&pods, is_index(0), Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(
        condition_reason(&end, "Complete").as_deref(),
        Some("SuccessPolicy")
    );
    assert_eq!(end.completed_indexes.as_deref(), Some("0"));
    assert_eq!(
        (end.active.unwrap_or(0), end.ready, end.terminating),
        (0, Some(0), Some(0))
    );
}

#[tokio::test]
async fn success_policy_succeeded_count_with_pending_indexes() {
    let env = TestEnv::new("diffp-spcount").await;
    let twins = Twins::create(&env, "spcount", |j| {
        indexed(j, 5, 3);
        j.spec.as_mut().unwrap().success_policy =
            Some(from_json(json!({"rules": [{"succeededCount": 2}]})));
    })
    .await;
    let pods = twins.active(3).await;
    twins.each_pod(&pods, is_index(1), Outcome::Fail(1)).await;
    twins.each_pod(&pods, is_index(0), Outcome::Succeed).await;
    twins.each_pod(&pods, is_index(2), Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(
        condition_reason(&end, "Complete").as_deref(),
        Some("SuccessPolicy")
    );
    assert_eq!(end.completed_indexes.as_deref(), Some("0,2"));
}

#[tokio::test]
async fn success_policy_succeeded_indexes_with_succeeded_count() {
    let env = TestEnv::new("diffp-spboth").await;
    let twins = Twins::create(&env, "spboth", |j| {
        indexed(j, 5, 4);
        j.spec.as_mut().unwrap().success_policy = Some(from_json(
            json!({"rules": [{"succeededIndexes": "1-3", "succeededCount": 2}]}),
        ));
    })
    .await;
    let pods = twins.active(4).await;
    // Index 0 is outside the rule's indexes: its success alone matches nothing.
    twins.each_pod(&pods, is_index(0), Outcome::Succeed).await;
    twins.each_pod(&pods, is_index(1), Outcome::Succeed).await;
    twins
        .assert_same_when("indexes 0 and 1 completed", |s| {
            s.completed_indexes.as_deref() == Some("0,1")
        })
        .await;
    twins.each_pod(&pods, is_index(3), Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(
        condition_reason(&end, "Complete").as_deref(),
        Some("SuccessPolicy")
    );
    assert_eq!(end.completed_indexes.as_deref(), Some("0,1,3"));
}

/// Deletes the one pod of each twin while it is held terminating; returns the pods.
async fn delete_the_running_pod(twins: &Twins<'_>) -> [Vec<Pod>; 2] {
    twins.wait_both("ready=1", |s| s.ready == Some(1)).await;
    let pods = twins.active(1).await;
    twins.delete_pods(&pods, 30).await;
    pods
}

async fn pod_count_is(env: &TestEnv, job: &str, n: usize) -> bool {
    env.pods_of(job).await.len() == n
}

#[tokio::test]
async fn pod_replacement_policy_failed_waits_for_terminating_pods() {
    let env = TestEnv::new("diffp-replfailed").await;
    let twins = Twins::create_from(&env, "rfailed", kwok_job, |j| {
        long_running_held(j);
        let s = j.spec.as_mut().unwrap();
        s.backoff_limit = Some(2);
        s.pod_replacement_policy = Some("Failed".into());
    })
    .await;
    let old = delete_the_running_pod(&twins).await;
    twins
        .assert_same_when("terminating=1, active=0", |s| {
            s.terminating == Some(1) && s.active.unwrap_or(0) == 0
        })
        .await;
    twins
        .assert_stays(
            "no replacement while the pod terminates",
            Duration::from_secs(5),
            async |job| pod_count_is(&env, job, 1).await,
        )
        .await;
    // The terminating pod fails (as a kubelet would report it): now it is replaced.
    twins.each_pod(&old, all, Outcome::Fail(143)).await;
    twins
        // Compared once the kwok replacement is ready: `ready` is transient before, and
        // each controller batches it differently.
        .assert_same_when("failed=1, replacement active and ready", |s| {
            s.failed == Some(1)
                && s.active == Some(1)
                && s.terminating == Some(0)
                && s.ready == Some(1)
        })
        .await;
    for name in &twins.names {
        release_holds(&env, name).await;
    }
    let new = twins.active(1).await;
    twins.each_pod(&new, all, Outcome::Succeed).await;
    for name in &twins.names {
        release_holds(&env, name).await;
    }
    let end = twins.assert_same_end("Complete").await;
    assert_eq!((end.failed, end.succeeded), (Some(1), Some(1)));
}

#[tokio::test]
async fn pod_replacement_policy_terminating_or_failed_replaces_at_once() {
    let env = TestEnv::new("diffp-repltof").await;
    let twins = Twins::create_from(&env, "rtof", kwok_job, |j| {
        long_running_held(j);
        let s = j.spec.as_mut().unwrap();
        s.backoff_limit = Some(2);
        s.pod_replacement_policy = Some("TerminatingOrFailed".into());
    })
    .await;
    let old = delete_the_running_pod(&twins).await;
    // The terminating pod counts as failed and a replacement starts while it terminates.
    let [ours, _] = twins
        // The replacement runs on kwok: compare once it is ready (see above).
        .assert_same_when("terminating=1 and a replacement active and ready", |s| {
            s.terminating == Some(1) && s.active == Some(1) && s.ready == Some(1)
        })
        .await;
    assert_eq!(ours.failed, Some(1));
    // The old pod finally fails: it was counted already and is not counted again.
    twins.each_pod(&old, all, Outcome::Fail(143)).await;
    for name in &twins.names {
        release_holds(&env, name).await;
    }
    twins
        // The replacement runs on kwok and turns ready on its own clock: compare once it has.
        .assert_same_when("terminating=0, the replacement ready", |s| {
            s.terminating == Some(0) && s.active == Some(1) && s.ready == Some(1)
        })
        .await;
    let new = twins.active(1).await;
    twins.each_pod(&new, all, Outcome::Succeed).await;
    for name in &twins.names {
        release_holds(&env, name).await;
    }
    let end = twins.assert_same_end("Complete").await;
    assert_eq!((end.failed, end.succeeded), (Some(1), Some(1)));
}

/// Waits until the Job and all its pods are gone.
async fn wait_job_and_pods_gone(env: &TestEnv, name: &str) {
    wait_for(
        &format!("{name} and its pods deleted"),
        Duration::from_secs(60),
        || async {
            let job_gone = env.jobs().get_opt(name).await.expect("reading").is_none();
            (job_gone && env.pods_of(name).await.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn ttl_after_finished_deletes_our_complete_job_and_its_pods() {
    let env = TestEnv::new("ttl-complete").await;
    let mut job = kwok_job("ttl-ok", Some(MANAGED_BY));
    let s = job.spec.as_mut().unwrap();
    s.completions = Some(2);
    s.parallelism = Some(2);
    s.ttl_seconds_after_finished = Some(2);
    env.create_job(&job).await;
    let done = env.wait_condition("ttl-ok", "Complete").await;
    assert_eq!(done.succeeded, Some(2));
    assert_eq!(env.pods_of("ttl-ok").await.len(), 2);
    wait_job_and_pods_gone(&env, "ttl-ok").await;
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn ttl_after_finished_deletes_our_failed_job_and_its_pods() {
    let env = TestEnv::new("ttl-failed").await;
    let mut job = kwok_job("ttl-fail", Some(MANAGED_BY));
    let s = job.spec.as_mut().unwrap();
    s.backoff_limit = Some(0);
    s.ttl_seconds_after_finished = Some(1);
    s.template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("jobkeeper.dev/exit-code".into(), "3".into());
    env.create_job(&job).await;
    // The pod runs and fails; the Job fails and is deleted a second later, pods with it.
    let failed = env.wait_condition("ttl-fail", "Failed").await;
    assert_eq!(failed.failed, Some(1));
    wait_job_and_pods_gone(&env, "ttl-fail").await;
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn pod_failure_policy_fail_job_on_pod_condition_names_the_condition() {
    let env = TestEnv::new("diffp-failjob-cond").await;
    let twins = Twins::create(&env, "failcond", |j| {
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(2);
        s.completions = Some(2);
        s.pod_failure_policy = Some(from_json(json!({"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]})));
    })
    .await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, |i, _| i == 1, Outcome::Succeed).await;
    twins
        .each_pod(
            &pods,
            |i, _| i == 0,
            Outcome::FailWithCondition(1, "DisruptionTarget", "PreemptionByScheduler"),
        )
        .await;
    let end = twins.assert_same_end("Failed").await;
    assert_eq!(
        condition_reason(&end, "Failed").as_deref(),
        Some("PodFailurePolicy")
    );
}

#[tokio::test]
async fn ignored_failure_with_backoff_limit_per_index_keeps_the_index() {
    let env = TestEnv::new("diffp-ignore-ix").await;
    let twins = Twins::create(&env, "ignix", |j| {
        indexed(j, 2, 2);
        let s = j.spec.as_mut().unwrap();
        s.backoff_limit_per_index = Some(0);
        s.pod_failure_policy = Some(from_json(json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]})));
    })
    .await;
    let pods = twins.active(2).await;
    twins
        .each_pod(
            &pods,
            is_index(0),
            Outcome::FailWithCondition(137, "DisruptionTarget", "EvictionByEvictionAPI"),
        )
        .await;
    twins.each_pod(&pods, is_index(1), Outcome::Succeed).await;
    // Index 0 is retried despite backoffLimitPerIndex 0, with the ignored failure noted.
    let retried = twins.active(1).await;
    for job_pods in &retried {
        let pod = &job_pods[0];
        assert_eq!(index_of(pod), Some(0));
        let annotations = pod.annotations();
        assert_eq!(
            (
                annotations
                    .get("batch.kubernetes.io/job-index-failure-count")
                    .map(String::as_str),
                annotations
                    .get("batch.kubernetes.io/job-index-ignored-failure-count")
                    .map(String::as_str),
            ),
            (Some("0"), Some("1")),
            "{}",
            pod.name_any()
        );
    }
    twins
        .assert_same_when("index 0 retried, index 1 completed", |s| {
            s.active == Some(1) && s.completed_indexes.as_deref() == Some("1")
        })
        .await;
    twins.each_pod(&retried, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.failed.unwrap_or(0), 0);
    assert_eq!(end.failed_indexes.as_deref(), Some(""));
}

#[tokio::test]
async fn indexed_pod_replacement_policy_failed_keeps_the_terminating_index() {
    let env = TestEnv::new("diffp-replix").await;
    let twins = Twins::create_from(&env, "rix", kwok_job, |j| {
        long_running_held(j);
        indexed(j, 2, 2);
        let s = j.spec.as_mut().unwrap();
        s.backoff_limit = Some(2);
        s.pod_replacement_policy = Some("Failed".into());
    })
    .await;
    twins.wait_both("ready=2", |s| s.ready == Some(2)).await;
    let pods = twins.active(2).await;
    let index_0: [Vec<Pod>; 2] = pods.clone().map(|job_pods| {
        job_pods
            .into_iter()
            .filter(|p| index_of(p) == Some(0))
            .collect()
    });
    twins.delete_pods(&index_0, 30).await;
    twins
        .assert_same_when("index 0 terminating", |s| {
            s.terminating == Some(1) && s.active == Some(1)
        })
        .await;
    twins
        .assert_stays(
            "index 0 not recreated while its pod terminates",
            Duration::from_secs(3),
            async |job| pod_count_is(&env, job, 2).await,
        )
        .await;
    twins.each_pod(&index_0, all, Outcome::Fail(143)).await;
    let replaced = twins
        // Compared once the kwok replacement is ready: `ready` is transient before, and
        // each controller batches it differently.
        .assert_same_when("index 0 failed and replaced, both pods ready", |s| {
            s.failed == Some(1)
                && s.active == Some(2)
                && s.terminating == Some(0)
                && s.ready == Some(2)
        })
        .await;
    assert_eq!(replaced[0].failed, Some(1));
    for name in &twins.names {
        release_holds(&env, name).await;
    }
    let pods = twins.active(2).await;
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    for name in &twins.names {
        release_holds(&env, name).await;
    }
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.completed_indexes.as_deref(), Some("0,1"));
}

#[tokio::test]
async fn fail_job_waits_for_terminating_pods_before_failed() {
    let env = TestEnv::new("diffp-failjob-term").await;
    let twins = Twins::create_from(&env, "fjterm", kwok_job, |j| {
        long_running_held(j);
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(2);
        s.completions = Some(2);
        s.pod_failure_policy = Some(from_json(json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
        ]})));
    })
    .await;
    twins.wait_both("ready=2", |s| s.ready == Some(2)).await;
    let pods = twins.active(2).await;
    twins
        .each_pod(&pods, |i, _| i == 0, Outcome::Fail(42))
        .await;
    // The other pod is deleted but held: FailureTarget, not yet Failed.
    let [ours, _] = twins
        .assert_same_when("FailureTarget with the other pod terminating", |s| {
            has_condition(s, "FailureTarget")
                && s.terminating == Some(1)
                && s.uncounted_terminated_pods
                    .as_ref()
                    .is_none_or(|u| u.failed.as_ref().is_none_or(Vec::is_empty))
        })
        .await;
    assert!(!has_condition(&ours, "Failed"));
    for name in &twins.names {
        release_holds(&env, name).await;
    }
    let end = twins.assert_same_end("Failed").await;
    assert_eq!(
        condition_reason(&end, "Failed").as_deref(),
        Some("PodFailurePolicy")
    );
}

#[tokio::test]
async fn success_policy_waits_for_terminating_pods_before_complete() {
    let env = TestEnv::new("diffp-sp-term").await;
    let twins = Twins::create_from(&env, "spterm", kwok_job, |j| {
        long_running_held(j);
        indexed(j, 3, 2);
        j.spec.as_mut().unwrap().success_policy =
            Some(from_json(json!({"rules": [{"succeededIndexes": "0"}]})));
    })
    .await;
    twins.wait_both("ready=2", |s| s.ready == Some(2)).await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, is_index(0), Outcome::Succeed).await;
    let [ours, _] = twins
        .assert_same_when("SuccessCriteriaMet with index 1 terminating", |s| {
            has_condition(s, "SuccessCriteriaMet") && s.terminating == Some(1)
        })
        .await;
    assert!(!has_condition(&ours, "Complete"));
    for name in &twins.names {
        release_holds(&env, name).await;
    }
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.completed_indexes.as_deref(), Some("0"));
}
