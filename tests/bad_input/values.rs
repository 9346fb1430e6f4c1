//! Cases: see tests/bad_input.rs. Values at the limits the API allows, in the Job and its
//! pods: most used to panic a sync (and a reconcile panic ends the process); Job names of
//! 63 characters and zero completions or parallelism are compared with the built-in
//! controller's twins.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use jobkeeper::cluster::lenient::Lenient;

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

/// A failed pod's finishedAt from a node clock far off (December 9999, then 1970), with
/// backoff left: the pod failure backoff does not wait for year 9999 (a finish time more
/// than 10 minutes ahead is clock skew; the pod's creation stands in), and a finish long
/// past needs no wait. Each failure is counted and replaced.
#[tokio::test]
async fn a_failed_pod_finished_in_year_9999_or_1970() {
    let env = TestEnv::new("skewed-finish").await;
    let first = env.first_pod_of_a_job_that_may_fail("skewed-finish").await;
    env.fail_finished_at(&first, "9999-12-30T00:00:00Z").await;
    let status = env
        .wait_status("skewed-finish", "the year-9999 failure replaced", |s| {
            s.failed == Some(1) && s.active == Some(1)
        })
        .await;
    assert!(!has_condition(&status, "Failed"));
    let second = env.wait_active("skewed-finish", 1).await;
    assert_ne!(second[0].name_any(), first.name_any());
    env.fail_finished_at(&second[0], "1970-01-02T00:00:00Z")
        .await;
    env.wait_status("skewed-finish", "the 1970 failure replaced", |s| {
        s.failed == Some(2) && s.active == Some(1)
    })
    .await;
    let before = syncs(&env).await;
    assert_alive(&env).await;
    healthy_job_completes(&env).await;
    let third = env.wait_active("skewed-finish", 1).await;
    env.succeed(&third[0]).await;
    let status = env.wait_condition("skewed-finish", "Complete").await;
    assert_eq!((status.succeeded, status.failed), (Some(1), Some(2)));
    assert_alive(&env).await;
    assert!(syncs(&env).await - before < 50.0);
    let log = env.controller().log_text();
    assert!(
        log.contains("creating 1 pod"),
        "the replacements are logged"
    );
    assert!(!log.contains("panicked"), "{log}");
    env.assert_no_rejected_status().await;
}

/// A pod of the Job (its labels and controller reference) with the completion index
/// annotation `index`, as another client or an older controller might leave one.
async fn create_indexed_stray(env: &TestEnv, job: &str, index: &str) -> Pod {
    let job = env.job(job).await;
    let spec = job.spec.as_ref().expect("a Job spec");
    let template = spec.template.metadata.clone().unwrap_or_default();
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.name_any(),
        uid: job.uid().expect("the Job's uid"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut annotations = template.annotations.unwrap_or_default();
    annotations.insert(
        "batch.kubernetes.io/job-completion-index".into(),
        index.into(),
    );
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-stray-", job.name_any())),
            labels: template.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: spec.template.spec.clone(),
        ..Default::default()
    };
    env.pods()
        .create(&Default::default(), &pod)
        .await
        .expect("creating a stray pod")
}

/// Pods of an Indexed Job whose completion index is "-1", "abc" or at least `completions`:
/// no index of the Job, so they are deleted like extra pods and never counted, and the
/// Job completes with exactly its completions.
#[tokio::test]
async fn pods_with_bogus_or_out_of_range_completion_indexes() {
    let env = TestEnv::new("bogus-index").await;
    let mut job = driven_job("bogus-index", Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    spec.completion_mode = Some("Indexed".into());
    spec.completions = Some(3);
    spec.parallelism = Some(3);
    env.create_job(&job).await;
    env.wait_active("bogus-index", 3).await;
    let mut strays = Vec::new();
    for index in ["-1", "abc", "99", "3"] {
        strays.push(
            create_indexed_stray(&env, "bogus-index", index)
                .await
                .name_any(),
        );
    }
    wait_for(
        "the stray pods deleted",
        Duration::from_secs(30),
        || async {
            let names: Vec<String> = env
                .active_pods("bogus-index")
                .await
                .iter()
                .map(|p| p.name_any())
                .collect();
            strays.iter().all(|s| !names.contains(s)).then_some(())
        },
    )
    .await;
    let before = syncs(&env).await;
    let pods = env.wait_active("bogus-index", 3).await;
    let indexes: Vec<Option<u32>> = pods.iter().map(index_of).collect();
    assert_eq!(indexes, [Some(0), Some(1), Some(2)]);
    for pod in &pods {
        env.succeed(pod).await;
    }
    let status = env.wait_condition("bogus-index", "Complete").await;
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(
        status.failed.unwrap_or(0),
        0,
        "the strays are never counted"
    );
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    let log = assert_unharmed(&env, before).await;
    assert!(log.contains("more than wanted"), "the deletions are logged");
}

/// completions 1,000,000,000 in Indexed mode, 3 at a time: the pending indexes are the
/// next ones after those done, the status stays a few intervals long.
#[tokio::test]
async fn an_indexed_job_of_a_billion_completions() {
    let env = TestEnv::new("billion").await;
    let mut job = driven_job("billion", Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    spec.completion_mode = Some("Indexed".into());
    spec.completions = Some(1_000_000_000);
    spec.parallelism = Some(3);
    env.create_job(&job).await;
    let pods = env.wait_active("billion", 3).await;
    let indexes: Vec<Option<u32>> = pods.iter().map(index_of).collect();
    assert_eq!(indexes, [Some(0), Some(1), Some(2)]);
    for pod in &pods {
        env.succeed(pod).await;
    }
    let status = env
        .wait_status("billion", "indexes 0-2 done, three more running", |s| {
            s.succeeded == Some(3)
                && s.completed_indexes.as_deref() == Some("0-2")
                && s.active == Some(3)
        })
        .await;
    assert!(!has_condition(&status, "Complete"));
    let size = serde_json::to_string(&status).expect("status json").len();
    assert!(size < 2_000, "a status of {size} bytes: {status:?}");
    let next = env.wait_active("billion", 3).await;
    let indexes: Vec<Option<u32>> = next.iter().map(index_of).collect();
    assert_eq!(indexes, [Some(3), Some(4), Some(5)]);
    let before = syncs(&env).await;
    let log = assert_unharmed(&env, before).await;
    assert!(
        log.contains("for indexes 0-2"),
        "the first indexes are logged"
    );
}

/// A pod template of about 100 KB (a 100,000-character annotation): pods are created
/// with it whole, counted, and the Job completes.
#[tokio::test]
async fn a_pod_template_of_100_kb() {
    let env = TestEnv::new("big-template").await;
    let mut job = driven_job("big-template", Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    spec.completions = Some(2);
    spec.parallelism = Some(2);
    let big = "x".repeat(100_000);
    spec.template.metadata.as_mut().unwrap().annotations = Some(std::collections::BTreeMap::from(
        [("example.com/big".to_string(), big.clone())],
    ));
    env.create_job(&job).await;
    let pods = env.wait_active("big-template", 2).await;
    for pod in &pods {
        assert_eq!(pod.annotations().get("example.com/big"), Some(&big));
    }
    let before = syncs(&env).await;
    for pod in &pods {
        env.succeed(pod).await;
    }
    let status = env.wait_condition("big-template", "Complete").await;
    assert_eq!(status.succeeded, Some(2));
    let log = assert_unharmed(&env, before).await;
    assert!(log.contains("creating 2 pods"), "the creation is logged");
}

/// activeDeadlineSeconds 1: the Job fails with DeadlineExceeded, its pods are deleted and
/// counted as the built-in controller counts them (a twin Job beside it).
#[tokio::test]
async fn an_active_deadline_of_one_second() {
    use crate::support::twins::Twins;
    let env = TestEnv::new("deadline-1s").await;
    let twins = Twins::create(&env, "deadline-1s", |job| {
        let spec = job.spec.as_mut().unwrap();
        spec.active_deadline_seconds = Some(1);
        spec.parallelism = Some(2);
        spec.completions = Some(4);
    })
    .await;
    let before = syncs(&env).await;
    let ours = twins.assert_same_end("Failed").await;
    assert_eq!(
        condition_reason(&ours, "Failed").as_deref(),
        Some("DeadlineExceeded")
    );
    for name in &twins.names {
        wait_for("the pods removed", Duration::from_secs(30), || async {
            env.active_pods(name).await.is_empty().then_some(())
        })
        .await;
    }
    let log = assert_unharmed(&env, before).await;
    assert!(log.contains("DeadlineExceeded"), "the verdict is logged");
}

/// parallelism 100,000: pods are created in bursts of at most 500 per sync, status.active
/// counts the pods there are, and scaling down to 0 deletes them all.
#[tokio::test]
async fn a_parallelism_of_100_000() {
    let env = TestEnv::new("wide").await;
    let mut job = driven_job("wide", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(100_000);
    env.create_job(&job).await;
    let n = wait_for(
        "the first burst of pods",
        Duration::from_secs(60),
        || async {
            let n = env.pods_of("wide").await.len();
            (n >= 500).then_some(n)
        },
    )
    .await;
    // A sync finished so far, plus at most one under way, each creating at most 500.
    let syncs_so_far = syncs(&env).await;
    assert!(
        n as f64 <= 500.0 * (syncs_so_far + 1.0),
        "{n} pods after {syncs_so_far} syncs"
    );
    let bursts = creation_bursts(&env.controller().log_text());
    assert!(
        !bursts.is_empty() && bursts.iter().all(|&b| b <= 500),
        "{bursts:?}"
    );
    env.jobs()
        .patch(
            "wide",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"parallelism": 0}})),
        )
        .await
        .expect("scaling the Job down to 0");
    wait_for("the pods deleted", Duration::from_secs(120), || async {
        env.pods_of("wide").await.is_empty().then_some(())
    })
    .await;
    let status = env
        .wait_status("wide", "no pod active", |s| s.active.unwrap_or(0) == 0)
        .await;
    assert_eq!(
        status.failed.unwrap_or(0),
        0,
        "scaled-down pods are not failures"
    );
    let before = syncs(&env).await;
    let log = assert_unharmed(&env, before).await;
    assert!(log.contains("creating 500 pods"), "a full burst is logged");
    assert!(log.contains("more than wanted"), "the scale-down is logged");
}

/// The pod counts of the controller's "creating N pods" decisions, in log order.
fn creation_bursts(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split("creating ").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

/// Twin Job names of `len` characters: `x…x-ours` (jobkeeper's) and `x…x-ref` (built-in).
fn names_of_length(len: usize) -> [String; 2] {
    [
        format!("{}-ours", "x".repeat(len - 5)),
        format!("{}-ref", "x".repeat(len - 4)),
    ]
}

/// The start of the names the Job's pods get: upstream's generateName (`<job>-`, or
/// `<job>-<index>-` with the Job name cut to keep the index), cut by the apiserver to 58
/// characters before it adds 5 random ones.
fn pod_name_prefix(job: &str, index: Option<u32>) -> String {
    const MAX_GENERATED_PREFIX: usize = 58;
    match index {
        None => job
            .chars()
            .chain(['-'])
            .take(MAX_GENERATED_PREFIX)
            .collect(),
        Some(i) => {
            let suffix = format!("-{i}-");
            let keep = MAX_GENERATED_PREFIX.saturating_sub(suffix.len());
            format!("{}{suffix}", &job[..job.len().min(keep)])
        }
    }
}

/// Creates the twins `names` ([`driven_job`]s shaped by `shape`) and checks their pods:
/// names as upstream makes them, the whole Job name in the job-name labels, the same
/// label keys on both twins' pods and, for an Indexed Job, the hostname `<job>-<index>`.
/// Then succeeds them and compares the final statuses.
async fn long_named_twins_complete(env: &TestEnv, names: [String; 2], shape: impl Fn(&mut Job)) {
    use crate::support::twins::{self, Twins};
    for (name, managed_by) in names.iter().zip([Some(MANAGED_BY), None]) {
        let mut job = driven_job(name, managed_by);
        shape(&mut job);
        env.create_job(&job).await;
    }
    let twins = Twins { env, names };
    let pods = twins.active(2).await;
    let mut label_keys = Vec::new();
    for (name, pods) in twins.names.iter().zip(&pods) {
        for pod in pods {
            let pod_name = pod.name_any();
            let prefix = pod_name_prefix(name, index_of(pod));
            assert!(
                pod_name.starts_with(&prefix) && pod_name.len() == prefix.len() + 5,
                "{name}: pod {pod_name}, want {prefix} and 5 characters"
            );
            for label in ["batch.kubernetes.io/job-name", "job-name"] {
                assert_eq!(pod.labels().get(label), Some(name), "{pod_name}: {label}");
            }
            if let Some(index) = index_of(pod) {
                let hostname = pod.spec.as_ref().and_then(|s| s.hostname.clone());
                assert_eq!(hostname, Some(format!("{name}-{index}")), "{pod_name}");
            }
        }
        let mut keys: Vec<&String> = pods.iter().flat_map(|p| p.labels().keys()).collect();
        keys.sort();
        keys.dedup();
        label_keys.push(keys);
    }
    assert_eq!(
        label_keys[0], label_keys[1],
        "pod label keys: jobkeeper, built-in"
    );
    twins
        .each_pod(&pods, twins::all, twins::Outcome::Succeed)
        .await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.succeeded, Some(2));
}

/// A Job name of 63 characters, a label value's limit (the job-name labels hold it),
/// NonIndexed: pods named `<name cut to 58>` and 5 random characters, labelled with the
/// whole name; the Job completes as its twin does.
#[tokio::test]
async fn a_job_name_of_63_characters() {
    let env = TestEnv::new("name-63").await;
    let names = names_of_length(63);
    assert!(names.iter().all(|n| n.len() == 63));
    let before = syncs(&env).await;
    long_named_twins_complete(&env, names, |job| {
        let spec = job.spec.as_mut().unwrap();
        spec.completions = Some(2);
        spec.parallelism = Some(2);
    })
    .await;
    let log = assert_unharmed(&env, before).await;
    assert!(log.contains("creating 2 pods"), "the creation is logged");
}

/// The same in Indexed mode: the apiserver refuses a 63-character name (the pods'
/// hostnames, `<name>-<index>`, would pass 63 characters); the longest name it accepts for
/// completions up to 10, 61 characters, runs: pod names keep `-<index>-` after the cut
/// name, hostnames are `<name>-<index>`, and the Job completes as its twin does.
#[tokio::test]
async fn an_indexed_job_name_of_63_characters_is_refused_and_of_61_runs() {
    let env = TestEnv::new("name-63-indexed").await;
    let indexed = |job: &mut Job| {
        let spec = job.spec.as_mut().unwrap();
        spec.completion_mode = Some("Indexed".into());
        spec.completions = Some(2);
        spec.parallelism = Some(2);
    };
    let [too_long, _] = names_of_length(63);
    let mut job = driven_job(&too_long, Some(MANAGED_BY));
    indexed(&mut job);
    match env.jobs().create(&Default::default(), &job).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(e.message.contains("invalid DNS label"), "{e:?}");
        }
        other => panic!("an Indexed Job named with 63 characters: {other:?}"),
    }
    let names = names_of_length(61);
    let before = syncs(&env).await;
    long_named_twins_complete(&env, names, indexed).await;
    let log = assert_unharmed(&env, before).await;
    assert!(
        log.contains("creating 2 pods for indexes 0,1"),
        "the creation is logged"
    );
}

/// completions 0: the Job completes at once, no pod created, as its twin does.
#[tokio::test]
async fn completions_of_zero() {
    use crate::support::twins::Twins;
    let env = TestEnv::new("completions-0").await;
    let before = syncs(&env).await;
    let twins = Twins::create(&env, "zero", |job| {
        let spec = job.spec.as_mut().unwrap();
        spec.completions = Some(0);
        spec.parallelism = Some(2);
    })
    .await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(
        (end.succeeded.unwrap_or(0), end.failed.unwrap_or(0)),
        (0, 0)
    );
    for name in &twins.names {
        assert!(env.pods_of(name).await.is_empty(), "{name}: no pod");
    }
    let log = assert_unharmed(&env, before).await;
    assert!(
        log.lines()
            .any(|l| l.contains("job=") && l.contains("zero-ours") && l.contains("Job completed")),
        "the completion is logged"
    );
}

/// parallelism 0: no pod is created and the Job stays as its twin does (started, no
/// condition); scaled to 2, it runs its 2 completions like the twin.
#[tokio::test]
async fn parallelism_of_zero_then_scaled_to_two() {
    use crate::support::twins::{self, Twins};
    let env = TestEnv::new("parallelism-0").await;
    let before = syncs(&env).await;
    let twins = Twins::create(&env, "idle", |job| {
        let spec = job.spec.as_mut().unwrap();
        spec.completions = Some(2);
        spec.parallelism = Some(0);
    })
    .await;
    let [ours, _] = twins
        .assert_same_when("started", |s| s.start_time.is_some())
        .await;
    assert!(
        ours.conditions.as_ref().is_none_or(Vec::is_empty),
        "{ours:?}"
    );
    twins
        .assert_stays("no pod", Duration::from_secs(3), async |name| {
            env.pods_of(name).await.is_empty()
        })
        .await;
    twins.assert_same_when("still idle", |_| true).await;

    twins.patch_spec(json!({"parallelism": 2})).await;
    let pods = twins.active(2).await;
    twins
        .each_pod(&pods, twins::all, twins::Outcome::Succeed)
        .await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.succeeded, Some(2));
    let log = assert_unharmed(&env, before).await;
    assert!(
        log.lines()
            .any(|l| l.contains("idle-ours") && l.contains("creating 2 pods")),
        "the scale-up is logged"
    );
}

/// A finishedAt in the last day of year 9999 (valid to the apiserver, Go's time goes to
/// 9999-12-31T23:59:59Z) is past what the client's time type holds (9999-12-30T22:00Z).
/// Strictly decoded, the pod failed the pod watch and every relist: the failure was never
/// counted and no Job in the namespace was served again. Read as the last time there is
/// (far ahead: clock skew), the failure is counted and replaced, and a restarted
/// controller's initial pod list holding the pod serves the Job to completion.
#[tokio::test]
async fn a_failed_pod_finished_on_the_last_day_of_year_9999() {
    let mut env = TestEnv::new("last-day").await;
    let first = env.first_pod_of_a_job_that_may_fail("last-day").await;
    env.fail_finished_at(&first, "9999-12-31T23:59:59Z").await;
    env.wait_status("last-day", "the failure counted and replaced", |s| {
        s.failed == Some(1) && s.active == Some(1)
    })
    .await;
    let second = env.wait_active("last-day", 1).await;
    assert_ne!(second[0].name_any(), first.name_any());
    assert_alive(&env).await;
    healthy_job_completes(&env).await;
    let log = env.controller().log_text();
    assert!(!log.contains("controller stream error"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // A controller started now lists the pod of year 9999 on its way up.
    drop(env.controller.take());
    env.controller = Some(Controller::start(&env.ns, &[]));
    env.succeed(&second[0]).await;
    let status = env.wait_condition("last-day", "Complete").await;
    assert_eq!((status.succeeded, status.failed), (Some(1), Some(1)));
    assert_alive(&env).await;
    let log = env.controller().log_text();
    assert!(!log.contains("controller stream error"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    env.assert_no_rejected_status().await;
}

/// A running pod whose container a node clock started on the last day of year 9999, made
/// an orphan: the adoption's patch answers with the pod, which the typed client could not
/// read (the sync failed after the write was made). Then its labels go: the pod is read
/// again before it is released, which failed the same way and left it held for good.
#[tokio::test]
async fn a_pod_started_on_the_last_day_of_year_9999_is_adopted_then_released() {
    let env = TestEnv::new("last-day-orphan").await;
    let job = env
        .create_job(&driven_job("last-day-orphan", Some(MANAGED_BY)))
        .await;
    let job_uid = job.uid().expect("the Job's uid");
    let pod = env.wait_active("last-day-orphan", 1).await.remove(0);
    let name = pod.name_any();
    let running = json!({
        "phase": "Running",
        "containerStatuses": [{
            "name": "main", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"running": {"startedAt": "9999-12-31T23:59:59Z"}},
        }],
    });
    env.merge_patch_status_raw("pods", &name, running).await;
    let pods: Api<Lenient<Pod>> = Api::namespaced(env.client.clone(), &env.ns);
    let controller = |p: &Pod| {
        p.owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone())
    };
    let holds_finalizer = |p: &Pod| {
        p.finalizers()
            .iter()
            .any(|f| f == "batch.kubernetes.io/job-tracking")
    };
    pods.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"ownerReferences": null, "finalizers": null}})),
    )
    .await
    .expect("orphaning the pod");
    wait_for("the orphan adopted", Duration::from_secs(30), || async {
        let Lenient(p) = pods.get(&name).await.ok()?;
        (controller(&p).as_ref() == Some(&job_uid) && holds_finalizer(&p)).then_some(())
    })
    .await;
    pods.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": null}})),
    )
    .await
    .expect("removing the pod's labels");
    wait_for("the pod released", Duration::from_secs(30), || async {
        let Lenient(p) = pods.get(&name).await.ok()?;
        (controller(&p).is_none() && !holds_finalizer(&p)).then_some(())
    })
    .await;
    // The Job runs a pod of its own instead.
    let replacement = env.wait_active("last-day-orphan", 1).await;
    assert_ne!(replacement[0].name_any(), name);
    assert_alive(&env).await;
    healthy_job_completes(&env).await;
    let log = env.controller().log_text();
    assert!(
        log.contains("released a pod that no longer matches"),
        "{log}"
    );
    assert!(!log.contains("sync failed"), "{log}");
    assert!(!log.contains("could not"), "{log}");
    assert!(!log.contains("controller stream error"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    env.assert_no_rejected_status().await;
}

/// Another status writer puts a Job's startTime on the last day of year 9999. Decoded
/// strictly, that one Job failed the Job watch and every relist: no Job was served. Read
/// leniently, the watch goes on and the Job is synced (its pod is created), but its status
/// writes are refused: the startTime it sends back is 9999-12-30T22:00Z, the last time
/// jiff holds, and a running Job's startTime is immutable. No time jiff holds could be
/// written: a completionTime must not be before the startTime either.
#[tokio::test]
async fn a_job_started_on_the_last_day_of_year_9999_by_another_writer() {
    let mut env = TestEnv::without_controller("last-day-job").await;
    env.create_job(&driven_job("last-day-job", Some(MANAGED_BY)))
        .await;
    env.merge_patch_status_raw(
        "jobs",
        "last-day-job",
        json!({"startTime": "9999-12-31T23:59:59Z"}),
    )
    .await;
    env.controller = Some(Controller::start(&env.ns, &[]));
    assert_alive(&env).await;
    let before = syncs(&env).await;
    healthy_job_completes(&env).await;
    env.wait_active("last-day-job", 1).await;
    let log = wait_for(
        "the refused status write logged",
        Duration::from_secs(30),
        || async {
            let log = env.controller().log_text();
            log.contains(r#"status.startTime: Invalid value: "9999-12-30T22:00:00Z""#)
                .then_some(log)
        },
    )
    .await;
    let job = format!("job={}/last-day-job", env.ns);
    assert!(
        log.lines()
            .any(|l| l.contains("sync failed; retrying") && l.contains(&job)),
        "{log}"
    );
    assert_alive(&env).await;
    assert!(syncs(&env).await - before < 50.0);
    assert!(!log.contains("controller stream error"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// The common end of a case: the process alive, a healthy Job next to the bad one served,
/// fewer than 50 syncs since `before` (no hot loop), no panic and no rejected status.
/// Returns the controller's log for the case's own checks.
async fn assert_unharmed(env: &TestEnv, before: f64) -> String {
    assert_alive(env).await;
    healthy_job_completes(env).await;
    assert!(syncs(env).await - before < 50.0, "a hot loop?");
    env.assert_no_rejected_status().await;
    let log = env.controller().log_text();
    assert!(!log.contains("panicked"), "{log}");
    log
}
