//! jobkeeper on the real control plane: the pods it makes, the status it writes, and how
//! it follows a Job through parallelism changes, failures, deadlines, suspension and
//! deletion. Every test asserts exact status fields and the pods that exist.

mod support;

use std::time::Duration;

use jobkeeper::act::execute::{Deleted, code_of, delete_released, release};
use jobkeeper::plan::RELEASED_ANNOTATION;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::*;

const FINALIZER: &str = "batch.kubernetes.io/job-tracking";

fn holds_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == FINALIZER)
}

async fn patch_job(env: &TestEnv, name: &str, spec: serde_json::Value) {
    env.jobs()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patching the Job");
}

#[tokio::test]
async fn nonindexed_pods_carry_labels_owner_finalizer_and_generate_name() {
    let env = TestEnv::new("pods-shape").await;
    let mut job = driven_job("shape", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(2);
    job.spec.as_mut().unwrap().completions = Some(2);
    let job = env.create_job(&job).await;
    let uid = job.uid().unwrap();
    let pods = env.wait_active("shape", 2).await;
    for pod in &pods {
        let labels = pod.labels();
        assert_eq!(labels.get("batch.kubernetes.io/controller-uid"), Some(&uid));
        assert_eq!(labels.get("controller-uid"), Some(&uid));
        assert_eq!(
            labels
                .get("batch.kubernetes.io/job-name")
                .map(String::as_str),
            Some("shape")
        );
        assert_eq!(labels.get("job-name").map(String::as_str), Some("shape"));
        assert_eq!(
            labels.get("app").map(String::as_str),
            Some("test"),
            "template labels kept"
        );
        let owner = pod.owner_references().first().expect("an owner");
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Job", "shape", uid.as_str())
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert!(holds_finalizer(pod));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("shape-"));
    }
    let status = env
        .wait_status("shape", "active=2", |s| s.active == Some(2))
        .await;
    assert_eq!(
        (
            status.ready,
            status.terminating,
            status.succeeded,
            status.failed
        ),
        (Some(0), Some(0), None, None)
    );
    assert!(status.start_time.is_some());
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn indexed_pods_get_index_annotation_label_hostname_and_env() {
    let env = TestEnv::new("indexed-shape").await;
    let mut job = driven_job("ix", Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    spec.completion_mode = Some("Indexed".into());
    spec.completions = Some(3);
    spec.parallelism = Some(3);
    // A container that sets the variable itself keeps its own value.
    let containers = &mut spec.template.spec.as_mut().unwrap().containers;
    containers.push(containers[0].clone());
    containers[1].name = "sidecar".into();
    containers[1].env = Some(vec![EnvVar {
        name: "JOB_COMPLETION_INDEX".into(),
        value: Some("mine".into()),
        ..Default::default()
    }]);
    env.create_job(&job).await;
    let pods = env.wait_active("ix", 3).await;
    let mut seen = Vec::new();
    for pod in &pods {
        let index = index_of(pod).expect("an index annotation");
        seen.push(index);
        assert_eq!(
            pod.labels().get("batch.kubernetes.io/job-completion-index"),
            Some(&index.to_string())
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.hostname.as_deref(),
            Some(format!("ix-{index}").as_str())
        );
        assert_eq!(
            pod.metadata.generate_name.as_deref(),
            Some(format!("ix-{index}-").as_str())
        );
        let main_env = spec.containers[0].env.clone().unwrap_or_default();
        let from_index = main_env
            .iter()
            .find(|e| e.name == "JOB_COMPLETION_INDEX")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone());
        assert!(
            from_index
                .as_deref()
                .is_some_and(|p| p.contains("batch.kubernetes.io/job-completion-index")),
            "JOB_COMPLETION_INDEX comes from the pod's index: {from_index:?}"
        );
        let sidecar_env = spec.containers[1].env.clone().unwrap_or_default();
        assert_eq!(
            sidecar_env
                .iter()
                .filter(|e| e.name == "JOB_COMPLETION_INDEX")
                .count(),
            1
        );
        assert_eq!(sidecar_env[0].value.as_deref(), Some("mine"));
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2]);
    for pod in &pods {
        if index_of(pod) != Some(1) {
            env.succeed(pod).await;
        }
    }
    let status = env
        .wait_status("ix", "indexes 0,2 completed", |s| {
            s.completed_indexes.as_deref() == Some("0,2") && s.succeeded == Some(2)
        })
        .await;
    assert_eq!(status.active, Some(1));
    let last = env.wait_active("ix", 1).await;
    env.succeed(&last[0]).await;
    let status = env.wait_condition("ix", "Complete").await;
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(status.completion_time, condition_time(&status, "Complete"));
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn job_runs_to_completion_on_kwok_nodes_with_exact_status() {
    let env = TestEnv::new("kwok-run").await;
    env.create_job(&kwok_job_sized("run", 4, 2, 200)).await;
    let status = env.wait_condition("run", "Complete").await;
    assert_eq!(
        (status.active, status.ready, status.terminating),
        (None, Some(0), Some(0))
    );
    assert_eq!((status.succeeded, status.failed), (Some(4), None));
    let conditions: Vec<(String, String)> = status
        .conditions
        .clone()
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.reason.unwrap_or_default()))
        .collect();
    assert_eq!(
        conditions,
        vec![
            (
                "SuccessCriteriaMet".to_string(),
                "CompletionsReached".to_string()
            ),
            ("Complete".to_string(), "CompletionsReached".to_string())
        ]
    );
    assert!(status.completion_time.as_ref().unwrap().0 >= status.start_time.as_ref().unwrap().0);
    assert_eq!(status.completion_time, condition_time(&status, "Complete"));
    let pods = env.pods_of("run").await;
    assert_eq!(pods.len(), 4, "exactly one pod per completion");
    assert!(pods.iter().all(|p| !holds_finalizer(p)));
    // Events, with upstream's reasons: one SuccessfulCreate per create call, naming the
    // pods it created. Repeats of a reason on one Job form a series (events.k8s.io) that
    // keeps the first note and counts the calls.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let (calls, first_note) = wait_for(
        "Completed and SuccessfulCreate events",
        Duration::from_secs(10),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            let completed = list
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Completed"));
            let creates: Vec<&Event> = list
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
                .collect();
            let calls: i32 = creates
                .iter()
                .map(|e| e.series.as_ref().map_or(1, |s| s.count))
                .sum();
            (completed && creates.len() == 1).then(|| (calls, creates[0].note.clone()))
        },
    )
    .await;
    // The first sync creates both pods of parallelism 2; each replacement is one call.
    assert!((2..=3).contains(&calls), "{calls} create calls");
    let first_note = first_note.unwrap_or_default();
    let names = first_note
        .strip_prefix("Created 2 pods: ")
        .unwrap_or_else(|| panic!("first SuccessfulCreate note: {first_note:?}"));
    let pod_names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    assert!(
        names.split(", ").all(|n| pod_names.iter().any(|p| p == n)),
        "{names} are not all pods of the Job ({pod_names:?})"
    );
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn parallelism_zero_then_up_then_down() {
    let env = TestEnv::new("parallelism").await;
    let mut job = driven_job("par", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(0);
    job.spec.as_mut().unwrap().completions = Some(5);
    env.create_job(&job).await;
    let status = env
        .wait_status("par", "a first status", |s| s.start_time.is_some())
        .await;
    assert_eq!((status.active, status.ready), (None, Some(0)));
    assert!(env.pods_of("par").await.is_empty());

    patch_job(&env, "par", json!({"parallelism": 3})).await;
    let pods = env.wait_active("par", 3).await;
    env.set_ready(&pods[2]).await;
    env.wait_status("par", "active=3 ready=1", |s| {
        s.active == Some(3) && s.ready == Some(1)
    })
    .await;

    patch_job(&env, "par", json!({"parallelism": 1})).await;
    let left = env.wait_active("par", 1).await;
    assert_eq!(
        left[0].name_any(),
        pods[2].name_any(),
        "the ready pod is kept; the least advanced go"
    );
    let status = env
        .wait_status("par", "active=1, nothing terminating", |s| {
            s.active == Some(1) && s.terminating == Some(0)
        })
        .await;
    assert_eq!(
        (status.ready, status.failed),
        (Some(1), None),
        "pods we delete are not failures"
    );
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn failed_pod_is_replaced_after_the_pod_failure_backoff() {
    let env = TestEnv::new("backoff").await;
    let mut job = driven_job("bo", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().backoff_limit = Some(3);
    env.create_job(&job).await;
    let first = env.wait_active("bo", 1).await.remove(0);
    // The backoff runs from the pod's failure, not from when the status counts it (a
    // counter-only write may be batched for up to --status-batch-period).
    let failed_at = jiff_now();
    env.fail(&first, 1).await;
    let status = env
        .wait_status("bo", "failed=1", |s| s.failed == Some(1))
        .await;
    assert_eq!(status.active, None, "no replacement during the backoff");
    let replacement = env.wait_active("bo", 1).await.remove(0);
    let created = replacement.metadata.creation_timestamp.clone().unwrap().0;
    // Upstream waits 10 s · 2^(failures−1) after the failure before a new pod.
    assert!(
        created.duration_since(failed_at).as_secs_f64() > 8.0,
        "replacement created too early: {created} vs {failed_at}"
    );
    env.succeed(&replacement).await;
    let status = env.wait_condition("bo", "Complete").await;
    assert_eq!((status.succeeded, status.failed), (Some(1), Some(1)));
    env.assert_no_rejected_status().await;
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[tokio::test]
async fn restart_counts_under_on_failure_exceed_the_backoff_limit() {
    let env = TestEnv::new("onfailure").await;
    let mut job = driven_job("of", Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    spec.backoff_limit = Some(2);
    spec.template.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
    env.create_job(&job).await;
    let pod = env.wait_active("of", 1).await.remove(0);
    env.set_restarts(&pod, 1).await;
    // Seeing the pod ready proves the controller planned from 1 restart: below the limit.
    let running = env
        .wait_status("of", "ready with 1 restart", |s| s.ready == Some(1))
        .await;
    assert_eq!((running.active, running.failed), (Some(1), None));
    assert!(!has_condition(&running, "FailureTarget"));
    // As upstream: restarts of running pods ≥ backoffLimit fail the Job.
    env.set_restarts(&pod, 2).await;
    let status = env.wait_condition("of", "Failed").await;
    let failed = status
        .conditions
        .clone()
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(
        (status.active, status.failed, status.terminating),
        (None, Some(1), Some(0))
    );
    assert!(status.completion_time.is_none());
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn active_deadline_fails_the_job_without_any_pod_event() {
    let env = TestEnv::new("deadline").await;
    let mut job = driven_job("dl", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().active_deadline_seconds = Some(2);
    job.spec.as_mut().unwrap().parallelism = Some(2);
    job.spec.as_mut().unwrap().completions = Some(2);
    env.create_job(&job).await;
    env.wait_active("dl", 2).await;
    // Nothing happens to the pods: the controller must come back on its own at the deadline.
    let status = env.wait_condition("dl", "Failed").await;
    let reasons: Vec<(String, String)> = status
        .conditions
        .clone()
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.reason.unwrap_or_default()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("FailureTarget".to_string(), "DeadlineExceeded".to_string()),
            ("Failed".to_string(), "DeadlineExceeded".to_string())
        ]
    );
    assert_eq!(
        (status.active, status.failed, status.terminating),
        (None, Some(2), Some(0))
    );
    wait_for("the pods to be gone", Duration::from_secs(30), || async {
        env.active_pods("dl").await.is_empty().then_some(())
    })
    .await;
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn suspended_at_creation_then_resumed() {
    let env = TestEnv::new("suspend").await;
    let mut job = driven_job("sus", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().suspend = Some(true);
    env.create_job(&job).await;
    let status = env.wait_condition("sus", "Suspended").await;
    assert_eq!((status.start_time.is_some(), status.active), (false, None));
    assert!(env.pods_of("sus").await.is_empty());
    patch_job(&env, "sus", json!({"suspend": false})).await;
    let pod = env.wait_active("sus", 1).await.remove(0);
    let status = env
        .wait_status("sus", "resumed", |s| {
            s.start_time.is_some() && s.active == Some(1)
        })
        .await;
    let suspended = status
        .conditions
        .clone()
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Suspended")
        .unwrap();
    assert_eq!(
        (suspended.status.as_str(), suspended.reason.as_deref()),
        ("False", Some("JobResumed"))
    );
    env.succeed(&pod).await;
    env.wait_condition("sus", "Complete").await;
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn deleting_a_job_releases_its_pods_from_the_tracking_finalizer() {
    let env = TestEnv::new("delete").await;
    let mut job = driven_job("del", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(3);
    job.spec.as_mut().unwrap().completions = Some(3);
    env.create_job(&job).await;
    let pods = env.wait_active("del", 3).await;
    env.succeed(&pods[0]).await;
    env.delete_job_and_wait_for_its_pods("del").await;
}

#[tokio::test]
async fn released_pod_is_adopted_back() {
    let env = TestEnv::new("adopt").await;
    let mut job = driven_job("ad", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(1);
    job.spec.as_mut().unwrap().completions = Some(1);
    let job = env.create_job(&job).await;
    let pod = env.wait_active("ad", 1).await.remove(0);
    // Make it an orphan that still matches the Job's selector. The finalizer goes too: the
    // built-in job controller strips the tracking finalizer of every orphan it sees, and
    // when its cache lags it does so after our adoption put the finalizer back (a race of
    // two controllers over one pod, not a behaviour of ours); it leaves an orphan without
    // the finalizer alone, so the adoption must add it.
    env.pods()
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": null, "finalizers": null}})),
        )
        .await
        .expect("orphaning the pod");
    let adopted = wait_for(
        "the orphan to be adopted",
        Duration::from_secs(30),
        || async {
            let p = env.pods().get(&pod.name_any()).await.ok()?;
            p.owner_references()
                .iter()
                .any(|o| o.uid == job.uid().unwrap() && o.controller == Some(true))
                .then_some(p)
        },
    )
    .await;
    assert!(holds_finalizer(&adopted));
    env.succeed(&adopted).await;
    let status = env.wait_condition("ad", "Complete").await;
    assert_eq!(status.succeeded, Some(1));
    assert_eq!(
        env.pods_of("ad").await.len(),
        1,
        "no second pod was created"
    );
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn jobs_of_other_controllers_are_left_alone() {
    let env = TestEnv::new("foreign").await;
    env.create_job(&driven_job("theirs", Some("example.com/other-controller")))
        .await;
    env.create_job(&driven_job("ours", Some(MANAGED_BY))).await;
    env.wait_active("ours", 1).await;
    // Ours got its pod; by then the other Job had the same chance and must have none.
    assert!(env.pods_of("theirs").await.is_empty());
    assert_eq!(
        env.job("theirs").await.status.unwrap_or_default(),
        Default::default()
    );
    // Only ours is cached: the gauge says 1 (and never 2) once ours is in.
    env.controller()
        .wait_gauge("jobkeeper_managed_jobs", 1.0)
        .await;
}

#[tokio::test]
async fn pods_of_other_controllers_jobs_are_not_cached() {
    let env = TestEnv::new("foreign-pods").await;
    let mut theirs = driven_job("theirs", None);
    let spec = theirs.spec.as_mut().unwrap();
    spec.parallelism = Some(2);
    spec.completions = Some(2);
    env.create_job(&theirs).await;
    // The built-in controller's pods carry the controller-uid label jobkeeper watches by.
    env.wait_active("theirs", 2).await;
    env.create_job(&driven_job("ours", Some(MANAGED_BY))).await;
    let ours = env.wait_active("ours", 1).await.remove(0);
    // Our pod turns ready after their pods were created: once our status shows it, the pod
    // watch, which delivers pods in order, has come past theirs.
    env.set_ready(&ours).await;
    env.wait_status("ours", "ready=1", |s| s.ready == Some(1))
        .await;
    // Only our pod is cached.
    env.controller()
        .wait_gauge("jobkeeper_cached_pods", 1.0)
        .await;
    assert_eq!(env.active_pods("theirs").await.len(), 2);
    env.succeed(&ours).await;
    env.wait_condition("ours", "Complete").await;
}

#[tokio::test]
async fn metrics_move_and_readiness_waits_for_the_caches() {
    let env = TestEnv::new("metrics").await;
    let mut job = kwok_job("m", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().completions = Some(2);
    env.create_job(&job).await;
    env.wait_condition("m", "Complete").await;
    let c = env.controller();
    wait_for(
        "metrics to show the finished Job",
        Duration::from_secs(10),
        || async {
            let text = c.metrics().await;
            (sum_metric(
                &text,
                "jobkeeper_jobs_finished_total",
                &[("result", "succeeded")],
            ) == 1.0)
                .then_some(())
        },
    )
    .await;
    let text = c.metrics().await;
    assert!(sum_metric(&text, "jobkeeper_job_syncs_total", &[("result", "success")]) >= 2.0);
    assert_eq!(
        sum_metric(
            &text,
            "jobkeeper_job_pods_finished_total",
            &[("result", "succeeded")]
        ),
        2.0
    );
    assert!(
        sum_metric(
            &text,
            "jobkeeper_kube_api_requests_total",
            &[("verb", "create"), ("resource", "pods")]
        ) >= 2.0
    );
    assert!(
        sum_metric(
            &text,
            "jobkeeper_terminated_pods_tracking_finalizer_total",
            &[("event", "delete")]
        ) >= 2.0
    );
    assert_eq!(sum_metric(&text, "jobkeeper_leader", &[]), 1.0);
    assert_eq!(sum_metric(&text, "jobkeeper_managed_jobs", &[]), 1.0);
    wait_for(
        "an empty queue once the Job is done",
        Duration::from_secs(10),
        || async {
            (sum_metric(&c.metrics().await, "jobkeeper_queue_depth", &[]) == 0.0).then_some(())
        },
    )
    .await;
    let ready = http_get(c.health_port, "/readyz").await.unwrap_or_default();
    assert!(
        ready.starts_with("HTTP/1.1 200") || ready.starts_with("HTTP/1.0 200"),
        "{ready}"
    );

    // A controller whose apiserver never answers stays alive but never ready.
    let dir = cluster_dir().join(format!("unreachable-{}", env.ns));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster: {server: 'https://127.0.0.1:9', insecure-skip-tls-verify: true}\nusers:\n- name: x\n  user: {token: x}\ncontexts:\n- name: x\n  context: {cluster: x, user: x}\ncurrent-context: x\n",
    )
    .unwrap();
    let lonely = Controller::start_with_kubeconfig(&env.ns, &kubeconfig, &[]);
    let live = wait_for("/healthz", Duration::from_secs(10), || async {
        http_get(lonely.health_port, "/healthz")
            .await
            .filter(|r| r.contains(" 200 "))
    })
    .await;
    assert!(live.contains("ok"));
    let not_ready = http_get(lonely.health_port, "/readyz")
        .await
        .unwrap_or_default();
    assert!(not_ready.contains(" 503 "), "{not_ready}");
}

#[tokio::test]
async fn many_pods_complete_with_exact_counts_and_no_double_creates() {
    // A client limit that keeps requests waiting for tokens, in turn: the load the status
    // batching answers with periods above --status-batch-period.
    let mut env = TestEnv::without_controller("exact").await;
    let limit = ["--kube-api-qps", "10", "--kube-api-burst", "10"];
    env.controller = Some(Controller::start(&env.ns, &limit));
    env.create_job(&kwok_job_sized("many", 40, 20, 100)).await;
    let status = env.wait_condition("many", "Complete").await;
    assert_eq!(
        (status.succeeded, status.failed, status.active),
        (Some(40), None, None)
    );
    // Exactly one pod per completion: a stale cache never made a pod twice.
    assert_eq!(env.pods_of("many").await.len(), 40);
    env.assert_no_rejected_status().await;
    // Pods finishing in bursts under that load are counted in batched writes: one write
    // per pod (let alone the two the tracking finalizer needs) would be 40 or more.
    let controller = env.controller.as_ref().expect("controller");
    let writes = controller
        .counter(
            "jobkeeper_kube_api_requests_total",
            &[("resource", "jobs/status"), ("code", "200")],
        )
        .await;
    assert!(
        (3.0..40.0).contains(&writes),
        "{writes} status writes for 40 pods"
    );
    assert!(
        controller
            .counter("jobkeeper_job_status_writes_held_total", &[])
            .await
            > 0.0
    );
}

/// A client limit every sync waits for (a token each 2 s), with every status written at
/// once, so that what waits for tokens shows in the writes' order.
const TOKENS_SHORT: [&str; 8] = [
    "--kube-api-qps",
    "0.5",
    "--kube-api-burst",
    "1",
    "--status-batch-period",
    "0s",
    "--status-batch-period-max",
    "0s",
];

/// When requests wait for tokens of the client's limit, a sync that both counts finished
/// pods and creates their successors counts first: the status that records the finished
/// pods shows no successor active yet, and the successors come after it.
#[tokio::test]
async fn with_tokens_short_finished_pods_are_counted_before_their_successors_are_created() {
    let mut env = TestEnv::without_controller("count-first").await;
    env.controller = Some(Controller::start(&env.ns, &TOKENS_SHORT));
    let mut job = driven_job("first", Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    (spec.parallelism, spec.completions) = (Some(2), Some(4));
    env.create_job(&job).await;
    let first = env.wait_active("first", 2).await;
    for pod in &first {
        env.succeed(pod).await;
    }
    let recorded = wait_for(
        "a status recording the two finished pods",
        Duration::from_secs(60),
        || async {
            let status = env.status("first").await;
            let uncounted = status
                .uncounted_terminated_pods
                .as_ref()
                .and_then(|u| u.succeeded.as_ref())
                .map_or(0, Vec::len);
            (uncounted + status.succeeded.unwrap_or(0) as usize >= 2).then_some(status)
        },
    )
    .await;
    assert_eq!(
        recorded.active.unwrap_or(0),
        0,
        "the successors were created before the finished pods were recorded: {recorded:?}"
    );
    let second = env.wait_active("first", 2).await;
    for pod in &second {
        env.succeed(pod).await;
    }
    let status = env.wait_condition("first", "Complete").await;
    assert_eq!((status.succeeded, status.active), (Some(4), None));
    assert_eq!(
        env.pods_of("first").await.len(),
        4,
        "one pod per completion"
    );
    env.assert_no_rejected_status().await;
}

/// With one worker and tokens short, a Job whose pod finished is counted ahead of other
/// Jobs' older work: `b2` and `b3` were triggered before `done`'s pod finished, yet `done`
/// completes while `b3` still has no pod. In trigger order, `b2` and `b3` would have made
/// their first syncs (a create and a status write each) before `done` was counted.
#[tokio::test]
async fn with_tokens_short_counting_goes_before_other_jobs_older_work() {
    let mut env = TestEnv::without_controller("count-lane").await;
    let one_worker = [&TOKENS_SHORT[..], &["--concurrency", "1"]].concat();
    env.controller = Some(Controller::start(&env.ns, &one_worker));
    env.create_job(&driven_job("done", Some(MANAGED_BY))).await;
    let pod = env.wait_active("done", 1).await.remove(0);
    env.wait_status("done", "active=1", |s| s.active == Some(1))
        .await;
    // The triggers of its first sync (its pod's creation, its status) served: what
    // `done` is owed next comes from its pod finishing, after the others were created.
    env.controller()
        .wait_gauge("jobkeeper_queue_depth", 0.0)
        .await;
    for name in ["b1", "b2", "b3"] {
        env.create_job(&driven_job(name, Some(MANAGED_BY))).await;
    }
    // b1's sync holds the only worker; b2 and b3 wait for it, triggered before this.
    env.wait_active("b1", 1).await;
    env.succeed(&pod).await;
    env.wait_condition("done", "Complete").await;
    assert!(
        env.pods_of("b3").await.is_empty(),
        "b3 got its pod before done was counted"
    );
    for name in ["b1", "b2", "b3"] {
        let pod = env.wait_active(name, 1).await.remove(0);
        env.succeed(&pod).await;
        env.wait_condition(name, "Complete").await;
    }
    env.assert_no_rejected_status().await;
}

/// Before deleting an excess pod, jobkeeper removes its tracking finalizer at the
/// resourceVersion its plan saw. A pod that finished since (here: succeeded) is refused
/// with 409 Conflict and keeps its finalizer, so its outcome is counted by the next plan
/// instead of deleted unseen and run again; at the version the pod is at, the removal goes
/// through. This is the apiserver's behaviour the executor relies on.
#[tokio::test]
async fn the_finalizer_of_a_pod_that_finished_after_the_plan_stays() {
    let env = TestEnv::without_controller("finished-after-plan").await;
    let seen = unsynced_pod_with_finalizer(&env, "excess").await;
    env.succeed(&seen).await;
    let refused = release(&env.pods(), "excess", seen.resource_version().as_deref())
        .await
        .expect_err("the pod changed since it was seen");
    assert_eq!(code_of(&refused), Some(409), "{refused}");
    let now = env.pods().get("excess").await.unwrap();
    assert!(now.finalizers().iter().any(|f| f == FINALIZER));
    assert_eq!(phase(&now), Some("Succeeded"));
    release(&env.pods(), "excess", now.resource_version().as_deref())
        .await
        .unwrap();
    let after = env.pods().get("excess").await.unwrap();
    assert!(!after.finalizers().iter().any(|f| f == FINALIZER));
}

/// The window after the release: the pod succeeds between the finalizer's removal and the
/// delete. The release marks the pod; the delete, made at the version the release returned,
/// is refused, and the pod is kept (Succeeded, marked, without the finalizer) for the next
/// plan to restore and count (`tests/crash.rs` follows a pod in that state to its count)
/// instead of deleted uncounted and run again.
#[tokio::test]
async fn a_pod_that_succeeds_between_its_release_and_its_delete_is_kept() {
    let env = TestEnv::without_controller("succeeded-after-release").await;
    let seen = unsynced_pod_with_finalizer(&env, "excess").await;
    let released = release(&env.pods(), "excess", seen.resource_version().as_deref())
        .await
        .unwrap();
    assert_ne!(
        released,
        seen.resource_version(),
        "the release is a new version"
    );
    env.succeed(&seen).await;
    let uid = seen.uid().unwrap();
    let outcome = delete_released(&env.pods(), "excess", &uid, released.as_deref(), true)
        .await
        .unwrap();
    assert_eq!(outcome, Deleted::Changed);
    let now = env.pods().get("excess").await.unwrap();
    assert!(now.metadata.deletion_timestamp.is_none(), "not deleted");
    assert!(!now.finalizers().iter().any(|f| f == FINALIZER));
    assert_eq!(
        now.annotations()
            .get(RELEASED_ANNOTATION)
            .map(String::as_str),
        Some("true"),
        "marked as released by the same write"
    );
    assert_eq!(phase(&now), Some("Succeeded"));
    // A later sync that finds the pod still running in a stale cache (no finalizer, so not
    // released by it) tries again: the mark keeps the pod for its count all the same.
    let again = delete_released(&env.pods(), "excess", &uid, released.as_deref(), false)
        .await
        .unwrap();
    assert_eq!(again, Deleted::Changed);
    let now = env.pods().get("excess").await.unwrap();
    assert!(
        now.metadata.deletion_timestamp.is_none(),
        "still not deleted"
    );
}

/// A released pod that changed in other ways (still running, or failed) is deleted at its
/// new version, as upstream deletes it: a failure of a pod being scaled away is not counted.
#[tokio::test]
async fn a_released_pod_that_changed_otherwise_is_still_deleted() {
    let env = TestEnv::without_controller("changed-after-release").await;
    for (name, fail) in [("relabelled", false), ("failed", true)] {
        let seen = unsynced_pod_with_finalizer(&env, name).await;
        let released = release(&env.pods(), name, seen.resource_version().as_deref())
            .await
            .unwrap();
        if fail {
            env.fail(&seen, 3).await;
        } else {
            let label = json!({"metadata": {"labels": {"touched": "yes"}}});
            env.pods()
                .patch(name, &PatchParams::default(), &Patch::Merge(&label))
                .await
                .unwrap();
        }
        let outcome = delete_released(
            &env.pods(),
            name,
            &seen.uid().unwrap(),
            released.as_deref(),
            true,
        )
        .await
        .unwrap();
        assert_eq!(outcome, Deleted::Now, "{name}");
        let left = env.pods().get_opt(name).await.unwrap();
        assert!(
            left.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
            "{name} is deleted"
        );
    }
}

/// A pod with the tracking finalizer, owned by a suspended Job that no controller here
/// syncs (so the built-in job controller does not take it for an orphan and strip the
/// finalizer itself).
async fn unsynced_pod_with_finalizer(env: &TestEnv, name: &str) -> Pod {
    let owner_name = format!("{name}-owner");
    let mut owner = driven_job(&owner_name, Some("example.com/nobody"));
    owner.spec.as_mut().unwrap().suspend = Some(true);
    let owner = env.create_job(&owner).await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "finalizers": [FINALIZER],
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": owner_name,
                                 "uid": owner.uid(), "controller": true}],
        },
        "spec": owner.spec.unwrap().template.spec,
    }))
    .unwrap();
    env.pods().create(&Default::default(), &pod).await.unwrap()
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}
