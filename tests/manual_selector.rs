//! Jobs with `spec.manualSelector: true`: their pods carry only the labels the author chose
//! (no controller-uid label), yet they are created, counted, adopted and released as the
//! built-in job controller does, each twin ending with the same status and no tracking
//! finalizer left.

mod support;

use std::collections::BTreeMap;

use jobkeeper::cluster::pod_index::controller_of;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::twins::*;
use support::*;

/// The labels a twin's selector and template share: its own, so the twins never match
/// each other's pods.
fn labels_of(job_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_string(), "manual".to_string()),
        ("twin".to_string(), job_name.to_string()),
    ])
}

/// Gives the Job a selector of its author's choosing.
fn manual(job: &mut Job) {
    let labels = labels_of(&job.name_any());
    let spec = job.spec.as_mut().unwrap();
    spec.manual_selector = Some(true);
    spec.selector = Some(LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    });
    spec.template.metadata = Some(ObjectMeta {
        labels: Some(labels),
        ..Default::default()
    });
}

fn has_controller_uid_label(pod: &Pod) -> bool {
    pod.labels()
        .contains_key("batch.kubernetes.io/controller-uid")
}

#[tokio::test]
async fn manual_selector_job_with_a_failure_completes() {
    let env = TestEnv::new("manual-fail").await;
    let twins = Twins::create(&env, "ms", |j| {
        manual(j);
        let s = j.spec.as_mut().unwrap();
        s.completions = Some(3);
        s.parallelism = Some(2);
    })
    .await;
    let pods = twins.active(2).await;
    assert!(
        pods.iter().flatten().all(|p| !has_controller_uid_label(p)),
        "a manualSelector Job's pods carry only the template's labels"
    );
    twins.each_pod(&pods, |i, _| i == 0, Outcome::Fail(1)).await;
    twins.each_pod(&pods, |i, _| i == 1, Outcome::Succeed).await;
    // The failure holds new pods back for the pod failure backoff, then two come.
    let pods = twins.active(2).await;
    twins.each_pod(&pods, all, Outcome::Ready).await;
    twins.wait_both("ready=2", |s| s.ready == Some(2)).await;
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!((end.succeeded, end.failed), (Some(3), Some(1)));
}

#[tokio::test]
async fn manual_selector_indexed_job_completes() {
    let env = TestEnv::new("manual-indexed").await;
    let twins = Twins::create(&env, "msi", |j| {
        manual(j);
        let s = j.spec.as_mut().unwrap();
        s.completions = Some(3);
        s.parallelism = Some(3);
        s.completion_mode = Some("Indexed".into());
    })
    .await;
    let pods = twins.active(3).await;
    twins
        .each_pod(&pods, |_, p| index_of(p) == Some(1), Outcome::Fail(2))
        .await;
    twins
        .each_pod(&pods, |_, p| index_of(p) != Some(1), Outcome::Succeed)
        .await;
    let pods = twins.active(1).await;
    assert!(pods.iter().all(|p| index_of(&p[0]) == Some(1)));
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(end.failed, Some(1));
}

/// An orphan pod: the driven Job's pod shape, no owner, the given labels.
fn orphan(name: &str, labels: BTreeMap<String, String>) -> Pod {
    let template = driven_job(name, None).spec.unwrap().template;
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: template.spec,
        ..Default::default()
    }
}

/// Waits until the built-in job controller's pod cache holds every pod created so far in
/// the namespace. Its cache lags the apiserver: a Job it syncs before an orphan reaches the
/// cache gets a new pod, and the orphan is adopted and deleted only afterwards, which is
/// not the scenario under test (jobkeeper lists a manualSelector Job's pods when it first
/// sees the Job, so it has no such lag). A suspended probe Job adopts a probe pod created
/// after those pods (and, being suspended, then deletes it); one watch delivers all pods in
/// order, so once the probe pod is adopted, the earlier pods are in the cache too.
async fn built_in_controller_has_seen_the_pods(env: &TestEnv) {
    let probe = "mso-probe";
    env.pods()
        .create(&PostParams::default(), &orphan(probe, labels_of(probe)))
        .await
        .expect("creating the probe pod");
    let mut job = driven_job(probe, None);
    manual(&mut job);
    job.spec.as_mut().unwrap().suspend = Some(true);
    env.create_job(&job).await;
    let what = "the built-in controller to adopt the probe pod";
    wait_for(what, std::time::Duration::from_secs(30), || async {
        let pod = env
            .pods()
            .get_opt(probe)
            .await
            .expect("reading the probe pod");
        adopted_by(pod.as_ref(), probe).then_some(())
    })
    .await;
}

/// Whether the Job `owner` has adopted the pod; a suspended owner deletes what it adopts,
/// and nothing else deletes the pod, so a pod being deleted or gone was adopted too.
fn adopted_by(pod: Option<&Pod>, owner: &str) -> bool {
    pod.is_none_or(|pod| {
        pod.metadata.deletion_timestamp.is_some()
            || controller_of(pod).is_some_and(|o| o.name == owner)
    })
}

#[tokio::test]
async fn manual_selector_job_adopts_a_matching_orphan() {
    let env = TestEnv::new("manual-adopt").await;
    let names = ["mso-ours", "mso-ref"];
    for name in names {
        env.pods()
            .create(
                &PostParams::default(),
                &orphan(&format!("{name}-orphan"), labels_of(name)),
            )
            .await
            .expect("creating an orphan pod");
    }
    built_in_controller_has_seen_the_pods(&env).await;
    let twins = Twins::create(&env, "mso", |j| {
        manual(j);
        let s = j.spec.as_mut().unwrap();
        s.completions = Some(1);
        s.parallelism = Some(1);
    })
    .await;
    // The orphan is adopted and counted as the one active pod: no new pod is made.
    let pods = twins.active(1).await;
    for (job_pods, name) in pods.iter().zip(names) {
        let pod = &job_pods[0];
        assert_eq!(pod.name_any(), format!("{name}-orphan"));
        assert!(
            pod.finalizers()
                .iter()
                .any(|f| f == "batch.kubernetes.io/job-tracking"),
            "{name}: the adopted pod is tracked"
        );
    }
    twins
        .assert_same_when("active=1", |s| s.active == Some(1))
        .await;
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.succeeded, Some(1));
}

#[tokio::test]
async fn manual_selector_job_releases_a_pod_relabelled_out_of_its_selector() {
    let env = TestEnv::new("manual-release").await;
    let twins = Twins::create(&env, "msr", |j| {
        manual(j);
        let s = j.spec.as_mut().unwrap();
        s.completions = Some(2);
        s.parallelism = Some(2);
    })
    .await;
    let pods = twins.active(2).await;
    let released: Vec<String> = pods.iter().map(|p| p[0].name_any()).collect();
    for name in &released {
        env.pods()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"twin": "elsewhere"}}})),
            )
            .await
            .expect("relabelling a pod");
    }
    // Each Job lets its pod go (no ownerReference, no tracking finalizer) and replaces it.
    for name in &released {
        wait_for(
            &format!("{name} released"),
            std::time::Duration::from_secs(30),
            || async {
                let pod = env.pods().get(name).await.expect("reading the pod");
                let owned = pod.owner_references().iter().any(|o| o.kind == "Job");
                let tracked = pod
                    .finalizers()
                    .iter()
                    .any(|f| f == "batch.kubernetes.io/job-tracking");
                (!owned && !tracked).then_some(())
            },
        )
        .await;
    }
    let pods = twins.active(2).await;
    for (job_pods, old) in pods.iter().zip(&released) {
        assert!(job_pods.iter().all(|p| &p.name_any() != old));
    }
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.succeeded, Some(2));
}
