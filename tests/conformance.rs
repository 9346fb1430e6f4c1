//! Counterparts of the Job conformance tests in upstream's e2e suite
//! (`test/e2e/apps/job.go`, every `framework.ConformanceIt`), run against jobkeeper:
//! every Job here has our managedBy. Each test is named `conformance_` + the upstream
//! test's name. Pods that must really run to completion run on kwok's fake nodes; where
//! upstream relies on what a kubelet does (a container that fails once and restarts, an
//! evicted container exiting), the pod driver plays the kubelet's part.
//! README-conformance.md maps the upstream names to these tests.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use support::twins::{Outcome, drive, wait_no_tracking_finalizer};
use support::*;

fn spec(j: &mut Job) -> &mut k8s_openapi::api::batch::v1::JobSpec {
    j.spec.as_mut().unwrap()
}

/// Upstream's `NewTestJob(..., parallelism, completions, nil, backoffLimit)`.
fn sized(mut j: Job, parallelism: i32, completions: i32, backoff_limit: i32) -> Job {
    let s = spec(&mut j);
    s.parallelism = Some(parallelism);
    s.completions = Some(completions);
    s.backoff_limit = Some(backoff_limit);
    j
}

fn indexed(mut j: Job) -> Job {
    spec(&mut j).completion_mode = Some("Indexed".into());
    j
}

fn pod_annotation(j: &mut Job, key: &str, value: &str) {
    spec(j)
        .template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
}

/// Upstream's "notTerminate" pods: kwok keeps them Running and Ready for ten minutes.
fn not_terminate(mut j: Job) -> Job {
    pod_annotation(&mut j, "jobkeeper.dev/run-ms", "600s");
    j
}

/// Upstream's "fail" pods: kwok runs each for a second, then it fails with `code`.
fn failing(mut j: Job, code: i32) -> Job {
    pod_annotation(&mut j, "jobkeeper.dev/exit-code", &code.to_string());
    j
}

/// Waits for the condition and checks its reason (upstream's `WaitForJobCondition`).
async fn wait_condition_with_reason(
    env: &TestEnv,
    job: &str,
    type_: &str,
    reason: &str,
) -> JobStatus {
    let status = env.wait_condition(job, type_).await;
    assert_eq!(
        condition_reason(&status, type_).as_deref(),
        Some(reason),
        "{job}: reason of {type_}"
    );
    status
}

/// Upstream's final checks on a finished Job: nothing active, ready or terminating,
/// no pod left holding the tracking finalizer, no status write rejected.
async fn assert_finished_cleanly(env: &TestEnv, job: &str, status: &JobStatus) {
    assert_eq!(
        (status.active.unwrap_or(0), status.ready, status.terminating),
        (0, Some(0), Some(0)),
        "{job}: active/ready/terminating of a finished Job"
    );
    wait_no_tracking_finalizer(env, job).await;
    env.assert_no_rejected_status().await;
}

/// Drives every new active pod of the Job once with `decide(pod)` until the Job has
/// the `condition`; returns the status then.
async fn drive_until(
    env: &TestEnv,
    job: &str,
    condition: &str,
    timeout: Duration,
    decide: impl Fn(&Pod) -> Outcome,
) -> JobStatus {
    let deadline = Instant::now() + timeout;
    let mut driven: HashSet<String> = HashSet::new();
    loop {
        let status = env.status(job).await;
        if has_condition(&status, condition) {
            return status;
        }
        let mut new_pods: Vec<(Pod, Outcome)> = env
            .active_pods(job)
            .await
            .into_iter()
            .filter(|p| driven.insert(p.uid().unwrap_or_default()))
            .map(|p| {
                let outcome = decide(&p);
                (p, outcome)
            })
            .collect();
        // Failures first: a success may finish the Job, and the controller then deletes
        // the pods not yet driven.
        new_pods.sort_by_key(|(_, outcome)| !matches!(outcome, Outcome::Fail(_)));
        for (pod, outcome) in &new_pods {
            drive(env, pod, *outcome).await;
        }
        assert!(
            Instant::now() < deadline,
            "{job}: no {condition} after {timeout:?}; status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn odd_fails_even_succeeds(pod: &Pod) -> Outcome {
    match index_of(pod) {
        Some(ix) if ix % 2 == 1 => Outcome::Fail(1),
        _ => Outcome::Succeed,
    }
}

#[tokio::test]
async fn conformance_should_allow_to_use_the_pod_failure_policy_on_exit_code_to_fail_the_job_early()
{
    let env = TestEnv::new("conf-pfp-failjob").await;
    let mut job = failing(
        sized(kwok_job("pod-failure-failjob", Some(MANAGED_BY)), 2, 4, 6),
        1,
    );
    spec(&mut job).pod_failure_policy = Some(from_json(json!({"rules": [
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}},
    ]})));
    env.create_job(&job).await;
    wait_condition_with_reason(
        &env,
        "pod-failure-failjob",
        "FailureTarget",
        "PodFailurePolicy",
    )
    .await;
    let status =
        wait_condition_with_reason(&env, "pod-failure-failjob", "Failed", "PodFailurePolicy").await;
    // One failure, far below backoffLimit 6, was enough.
    assert!(status.failed.unwrap_or(0) <= 2, "{status:?}");
    assert_eq!(status.succeeded.unwrap_or(0), 0);
    assert_finished_cleanly(&env, "pod-failure-failjob", &status).await;
}

#[tokio::test]
async fn conformance_should_allow_to_use_a_pod_failure_policy_to_ignore_failure_matching_on_disruption_target_condition()
 {
    let env = TestEnv::new("conf-pfp-disruption").await;
    // Upstream runs 3 pods; 2 keep the pod failure backoff after the evictions at 20 s.
    let num_pods = 2;
    let name = "evicted-pod-ignore";
    let mut job = indexed(sized(
        driven_job(name, Some(MANAGED_BY)),
        num_pods,
        num_pods,
        num_pods - 1,
    ));
    spec(&mut job).pod_failure_policy = Some(from_json(json!({"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]})));
    env.create_job(&job).await;
    let pods = env.wait_active(name, num_pods as usize).await;
    for pod in &pods {
        env.set_ready(pod).await;
    }
    env.wait_status(name, "all pods ready", |s| s.ready == Some(num_pods))
        .await;
    // Evict every pod through the Eviction API (the apiserver adds DisruptionTarget), then
    // play the kubelet: the evicted container exits 137.
    for pod in &pods {
        env.pods()
            .evict(&pod.name_any(), &EvictParams::default())
            .await
            .expect("evicting a pod");
    }
    for pod in &pods {
        let evicted = env.pods().get(&pod.name_any()).await.expect("reading pod");
        let disrupted = evicted
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "DisruptionTarget"));
        assert!(disrupted, "the eviction adds DisruptionTarget");
        drive(
            &env,
            pod,
            Outcome::FailWithCondition(137, "DisruptionTarget", "EvictionByEvictionAPI"),
        )
        .await;
    }
    for pod in &pods {
        wait_for(
            "the evicted pod deleted",
            Duration::from_secs(30),
            || async {
                env.pods()
                    .get_opt(&pod.name_any())
                    .await
                    .expect("reading")
                    .is_none()
                    .then_some(())
            },
        )
        .await;
    }
    let status = drive_until(&env, name, "Complete", Duration::from_secs(90), |_| {
        Outcome::Succeed
    })
    .await;
    assert_eq!(
        condition_reason(&status, "Complete").as_deref(),
        Some("CompletionsReached")
    );
    assert_eq!(
        status.failed.unwrap_or(0),
        0,
        "ignored failures are not counted"
    );
    assert_eq!(status.succeeded, Some(num_pods));
    assert_finished_cleanly(&env, name, &status).await;
}

#[tokio::test]
async fn conformance_should_create_pods_for_an_indexed_job_with_completion_indexes_and_specified_hostname()
 {
    let env = TestEnv::new("conf-indexed").await;
    let name = "indexed-job";
    env.create_job(&indexed(sized(kwok_job(name, Some(MANAGED_BY)), 2, 4, 6)))
        .await;
    let status = wait_condition_with_reason(&env, name, "Complete", "CompletionsReached").await;
    assert_eq!(status.completed_indexes.as_deref(), Some("0-3"));
    let mut succeeded_indexes = BTreeSet::new();
    for pod in env.pods_of(name).await {
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded") {
            continue;
        }
        let ix = index_of(&pod).expect("a completion index annotation");
        succeeded_indexes.insert(ix);
        let pod_spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            pod_spec.hostname.as_deref(),
            Some(format!("{name}-{ix}").as_str())
        );
        let env_var = pod_spec.containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "JOB_COMPLETION_INDEX")
            .expect("JOB_COMPLETION_INDEX in the container");
        let field = env_var
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        // The 1.37 built-in controller reads the index from the pod label (PodIndexLabel).
        assert_eq!(
            field,
            Some("metadata.labels['batch.kubernetes.io/job-completion-index']")
        );
        assert_eq!(
            pod.labels()
                .get("batch.kubernetes.io/job-completion-index")
                .map(String::as_str),
            Some(ix.to_string().as_str())
        );
    }
    assert_eq!(succeeded_indexes, BTreeSet::from([0, 1, 2, 3]));
    assert_finished_cleanly(&env, name, &status).await;
}

#[tokio::test]
async fn conformance_with_success_policy_should_succeeded_when_all_indexes_succeeded() {
    let env = TestEnv::new("conf-sp-all").await;
    let name = "with-success-policy-all";
    let mut job = indexed(sized(kwok_job(name, Some(MANAGED_BY)), 2, 2, 6));
    spec(&mut job).success_policy = Some(from_json(json!({"rules": [{"succeededCount": 2}]})));
    env.create_job(&job).await;
    wait_condition_with_reason(&env, name, "SuccessCriteriaMet", "SuccessPolicy").await;
    let status = wait_condition_with_reason(&env, name, "Complete", "SuccessPolicy").await;
    assert_eq!(status.succeeded, Some(2));
    assert_eq!(status.failed.unwrap_or(0), 0);
    assert_finished_cleanly(&env, name, &status).await;
}

/// Upstream's two "some indexes remain pending" tests: 5 indexes, 2 at a time, pods with
/// odd indexes fail and even ones succeed.
async fn success_policy_with_pending_indexes(env: &TestEnv, name: &str, rule: serde_json::Value) {
    let mut job = indexed(sized(driven_job(name, Some(MANAGED_BY)), 2, 5, i32::MAX));
    spec(&mut job).success_policy = Some(from_json(json!({ "rules": [rule] })));
    env.create_job(&job).await;
    let status = drive_until(
        env,
        name,
        "Complete",
        Duration::from_secs(60),
        odd_fails_even_succeeds,
    )
    .await;
    assert_eq!(
        condition_reason(&status, "SuccessCriteriaMet").as_deref(),
        Some("SuccessPolicy")
    );
    assert_eq!(
        condition_reason(&status, "Complete").as_deref(),
        Some("SuccessPolicy")
    );
    assert_eq!(status.completed_indexes.as_deref(), Some("0"));
    assert_eq!(status.active.unwrap_or(0), 0);
    assert_finished_cleanly(env, name, &status).await;
}

#[tokio::test]
async fn conformance_with_success_policy_succeeded_indexes_rule_should_succeeded_even_when_some_indexes_remain_pending()
 {
    let env = TestEnv::new("conf-sp-indexes").await;
    success_policy_with_pending_indexes(
        &env,
        "with-success-policy-indexes",
        json!({"succeededIndexes": "0"}),
    )
    .await;
}

#[tokio::test]
async fn conformance_with_success_policy_succeeded_count_rule_should_succeeded_even_when_some_indexes_remain_pending()
 {
    let env = TestEnv::new("conf-sp-count").await;
    success_policy_with_pending_indexes(
        &env,
        "with-success-policy-count",
        json!({"succeededCount": 1}),
    )
    .await;
}

#[tokio::test]
async fn conformance_should_execute_all_indexes_despite_some_failing_when_using_backoff_limit_per_index()
 {
    let env = TestEnv::new("conf-blpi").await;
    let name = "with-backoff-limit-per-index";
    let mut job = indexed(sized(driven_job(name, Some(MANAGED_BY)), 2, 4, 6));
    spec(&mut job).backoff_limit = None;
    spec(&mut job).backoff_limit_per_index = Some(1);
    env.create_job(&job).await;
    let status = drive_until(
        &env,
        name,
        "Failed",
        Duration::from_secs(120),
        odd_fails_even_succeeds,
    )
    .await;
    assert_eq!(
        condition_reason(&status, "Failed").as_deref(),
        Some("FailedIndexes")
    );
    assert_eq!(status.failed_indexes.as_deref(), Some("1,3"));
    assert_eq!(status.completed_indexes.as_deref(), Some("0,2"));
    assert_eq!(status.failed, Some(4));
    assert_eq!(status.succeeded, Some(2));
    assert_finished_cleanly(&env, name, &status).await;
}

#[tokio::test]
async fn conformance_should_terminate_job_execution_when_the_number_of_failed_indexes_exceeds_max_failed_indexes()
 {
    let env = TestEnv::new("conf-maxfailed").await;
    let name = "with-max-failed-indexes";
    let mut job = failing(indexed(sized(kwok_job(name, Some(MANAGED_BY)), 1, 4, 6)), 1);
    spec(&mut job).backoff_limit = None;
    spec(&mut job).backoff_limit_per_index = Some(0);
    spec(&mut job).max_failed_indexes = Some(0);
    env.create_job(&job).await;
    wait_condition_with_reason(&env, name, "FailureTarget", "MaxFailedIndexesExceeded").await;
    let status = wait_condition_with_reason(&env, name, "Failed", "MaxFailedIndexesExceeded").await;
    assert_eq!(status.failed_indexes.as_deref(), Some("0"));
    assert_eq!(status.failed, Some(1));
    assert_finished_cleanly(&env, name, &status).await;
}

#[tokio::test]
async fn conformance_should_mark_indexes_as_failed_when_the_fail_index_action_is_matched_in_pod_failure_policy()
 {
    let env = TestEnv::new("conf-failindex").await;
    let name = "matching-fail-index-action";
    let mut job = indexed(sized(driven_job(name, Some(MANAGED_BY)), 2, 2, 6));
    spec(&mut job).backoff_limit = None;
    spec(&mut job).backoff_limit_per_index = Some(1);
    spec(&mut job).pod_failure_policy = Some(from_json(json!({"rules": [
        {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [1]}},
    ]})));
    env.create_job(&job).await;
    let status = drive_until(
        &env,
        name,
        "Failed",
        Duration::from_secs(60),
        odd_fails_even_succeeds,
    )
    .await;
    assert_eq!(
        condition_reason(&status, "Failed").as_deref(),
        Some("FailedIndexes")
    );
    // The failed index was not retried despite backoffLimitPerIndex 1.
    assert_eq!(status.failed_indexes.as_deref(), Some("1"));
    assert_eq!(status.completed_indexes.as_deref(), Some("0"));
    assert_eq!(status.failed, Some(1));
    assert_eq!(status.succeeded, Some(1));
    assert_finished_cleanly(&env, name, &status).await;
}

#[tokio::test]
async fn conformance_should_run_a_job_to_completion_when_tasks_sometimes_fail_and_are_locally_restarted()
 {
    let env = TestEnv::new("conf-local-restart").await;
    let name = "fail-once-local";
    let mut job = sized(driven_job(name, Some(MANAGED_BY)), 2, 4, 6);
    spec(&mut job)
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("OnFailure".into());
    env.create_job(&job).await;
    // No kubelet restarts containers here: each pod reports one container restart (the
    // container failed once and was restarted in place), then succeeds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut driven: HashSet<String> = HashSet::new();
    loop {
        let status = env.status(name).await;
        if has_condition(&status, "Complete") {
            assert_eq!(
                condition_reason(&status, "Complete").as_deref(),
                Some("CompletionsReached")
            );
            assert_eq!(status.succeeded, Some(4));
            assert_eq!(status.failed.unwrap_or(0), 0);
            assert_finished_cleanly(&env, name, &status).await;
            return;
        }
        for pod in env.active_pods(name).await {
            if driven.insert(pod.uid().unwrap_or_default()) {
                env.set_restarts(&pod, 1).await;
                env.wait_status(name, "the restart seen as active", |s| {
                    s.active.unwrap_or(0) > 0
                })
                .await;
                env.succeed(&pod).await;
            }
        }
        assert!(Instant::now() < deadline, "{name}: no Complete; {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn conformance_should_delete_a_job() {
    let env = TestEnv::new("conf-delete").await;
    let name = "foo";
    env.create_job(&not_terminate(sized(
        kwok_job(name, Some(MANAGED_BY)),
        2,
        4,
        6,
    )))
    .await;
    env.wait_status(name, "2 pods running", |s| s.ready == Some(2))
        .await;
    // Upstream's DeleteResourceAndWaitForGC: foreground deletion waits for the pods, which
    // hold the tracking finalizer until the controller lets them go.
    env.jobs()
        .delete(name, &DeleteParams::foreground())
        .await
        .expect("deleting the Job");
    wait_for(
        "the Job and its pods gone",
        Duration::from_secs(60),
        || async {
            let gone = env.jobs().get_opt(name).await.expect("reading").is_none();
            (gone && env.pods_of(name).await.is_empty()).then_some(())
        },
    )
    .await;
    env.assert_no_rejected_status().await;
}

fn controller_uid(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

#[tokio::test]
async fn conformance_should_adopt_matching_orphans_and_release_non_matching_pods() {
    let env = TestEnv::new("conf-adopt").await;
    let name = "adopt-release";
    let job = env
        .create_job(&not_terminate(sized(
            kwok_job(name, Some(MANAGED_BY)),
            2,
            4,
            6,
        )))
        .await;
    let job_uid = job.meta().uid.clone();
    let pods = env.wait_active(name, 2).await;
    let pod = pods[0].name_any();

    // Orphan one pod.
    env.pods()
        .patch(
            &pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
        )
        .await
        .expect("orphaning the pod");
    wait_for(
        "the Job re-adopts the pod",
        Duration::from_secs(30),
        || async {
            let p = env.pods().get(&pod).await.expect("reading pod");
            (controller_uid(&p) == job_uid).then_some(())
        },
    )
    .await;

    // Make it stop matching the selector.
    env.pods()
        .patch(
            &pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": null}})),
        )
        .await
        .expect("removing the pod's labels");
    let released = try_wait_for(Duration::from_secs(30), || async {
        let p = env.pods().get(&pod).await.expect("reading pod");
        controller_uid(&p).is_none().then_some(())
    })
    .await;
    if released.is_none() {
        panic!(
            "timed out after 30s waiting for the Job to release the pod\n{}",
            env.pod_story(&pod).await
        );
    }
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn conformance_should_apply_changes_to_a_job_status() {
    let env = TestEnv::new("conf-status").await;
    let name = "suspend-false-to-true";
    let job = env
        .create_job(&not_terminate(sized(
            kwok_job(name, Some(MANAGED_BY)),
            2,
            4,
            6,
        )))
        .await;
    env.wait_status(name, "2 pods running", |s| s.ready == Some(2))
        .await;

    // Patch /status (with an annotation in the same patch), at whole seconds as the wire
    // keeps them.
    let now1 = "2031-01-02T03:04:05Z";
    let patched = env
        .jobs()
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"patchedstatus": "true"}},
                "status": {"conditions": [
                    {"type": "CustomConditionType", "status": "True", "lastTransitionTime": now1},
                ]},
            })),
        )
        .await
        .expect("patching /status");
    let custom_time = |job: &Job| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "CustomConditionType"))
            .and_then(|c| c.last_transition_time.clone())
            .map(|t| t.0.to_string())
    };
    assert_eq!(custom_time(&patched).as_deref(), Some(now1));
    assert_eq!(
        patched
            .annotations()
            .get("patchedstatus")
            .map(String::as_str),
        Some("true")
    );

    // Update /status, retrying on conflicts with the controller's own writes.
    let now2 = "2031-01-02T03:04:06Z";
    let updated = wait_for("updating /status", Duration::from_secs(30), || async {
        let mut current = env.job(name).await;
        let conditions = current.status.as_mut()?.conditions.as_mut()?;
        let custom = conditions
            .iter_mut()
            .find(|c| c.type_ == "CustomConditionType")
            .expect("the patched condition is still there");
        custom.last_transition_time = Some(from_json(json!(now2)));
        env.jobs()
            .replace_status(name, &PostParams::default(), &current)
            .await
            .ok()
    })
    .await;
    assert_eq!(custom_time(&updated).as_deref(), Some(now2));

    // Read /status.
    let status_view = env.jobs().get_status(name).await.expect("reading /status");
    assert_eq!(status_view.meta().uid, job.meta().uid);

    // The controller's later writes keep the foreign condition and are all accepted.
    env.wait_status(name, "ready=2 after the updates", |s| s.ready == Some(2))
        .await;
    assert_eq!(custom_time(&env.job(name).await).as_deref(), Some(now2));
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn conformance_should_manage_the_lifecycle_of_a_job() {
    let env = TestEnv::new("conf-lifecycle").await;
    let name = format!("e2e-{}", &env.ns[env.ns.len() - 5..]);
    let selector = format!("e2e-job-label={name}");
    let mut job = sized(kwok_job(&name, Some(MANAGED_BY)), 2, 4, 6);
    job.metadata.labels = Some(BTreeMap::from([("e2e-job-label".into(), name.clone())]));
    spec(&mut job).suspend = Some(true);
    let created = env.create_job(&job).await;
    assert!(created.resource_version().is_some());
    env.wait_condition(&name, "Suspended").await;
    assert!(env.pods_of(&name).await.is_empty());

    // Patch a label.
    let patched = env
        .jobs()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {name.clone(): "patched"}}})),
        )
        .await
        .expect("patching the Job");
    assert_eq!(
        patched.labels().get(&name).map(String::as_str),
        Some("patched")
    );

    // Update: resume and annotate, retrying on conflicts with the controller.
    let updated = wait_for("updating the Job", Duration::from_secs(30), || async {
        let mut current = env.job(&name).await;
        spec(&mut current).suspend = Some(false);
        current
            .annotations_mut()
            .insert("updated".into(), "true".into());
        env.jobs()
            .replace(&name, &PostParams::default(), &current)
            .await
            .ok()
    })
    .await;
    assert_eq!(
        updated.annotations().get("updated").map(String::as_str),
        Some("true")
    );

    // List across namespaces by label.
    let all_jobs: Api<Job> = Api::all(env.client.clone());
    let listed = all_jobs
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("listing Jobs");
    assert_eq!(listed.items.len(), 1);

    let status = wait_condition_with_reason(&env, &name, "Complete", "CompletionsReached").await;
    assert_eq!(status.succeeded, Some(4));
    assert_finished_cleanly(&env, &name, &status).await;

    env.jobs()
        .delete_collection(
            &DeleteParams::background(),
            &ListParams::default().labels(&selector),
        )
        .await
        .expect("deleting the Jobs by label");
    wait_for("the Job deleted", Duration::from_secs(30), || async {
        let left = all_jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("listing Jobs");
        left.items.is_empty().then_some(())
    })
    .await;
}
