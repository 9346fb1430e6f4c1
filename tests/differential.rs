//! The same Job twice in one namespace — once with our managedBy, once for the built-in
//! job controller — the same pod outcomes driven on both, and the final statuses compared
//! field by field (timestamps and names aside).

mod support;

use serde_json::json;
use support::twins::*;
use support::*;

#[tokio::test]
async fn three_completions_two_at_a_time() {
    let env = TestEnv::new("diff-3x2").await;
    let twins = Twins::create(&env, "job", |j| {
        let s = j.spec.as_mut().unwrap();
        s.completions = Some(3);
        s.parallelism = Some(2);
    })
    .await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, all, Outcome::Ready).await;
    twins.wait_both("ready=2", |s| s.ready == Some(2)).await;
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    let pods = twins.active(1).await;
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.succeeded, Some(3));
}

#[tokio::test]
async fn indexed_five_with_one_index_failing_once() {
    let env = TestEnv::new("diff-indexed").await;
    let twins = Twins::create(&env, "idx", |j| {
        let s = j.spec.as_mut().unwrap();
        s.completions = Some(5);
        s.parallelism = Some(5);
        s.completion_mode = Some("Indexed".into());
    })
    .await;
    let pods = twins.active(5).await;
    twins
        .each_pod(&pods, |_, p| index_of(p) == Some(2), Outcome::Fail(1))
        .await;
    twins
        .each_pod(&pods, |_, p| index_of(p) != Some(2), Outcome::Succeed)
        .await;
    // Index 2 comes back after the pod failure backoff.
    let pods = twins.active(1).await;
    assert!(
        pods.iter()
            .all(|job_pods| index_of(&job_pods[0]) == Some(2))
    );
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.completed_indexes.as_deref(), Some("0-4"));
    assert_eq!(end.failed, Some(1));
}

#[tokio::test]
async fn backoff_limit_exceeded() {
    let env = TestEnv::new("diff-backoff").await;
    let twins = Twins::create(&env, "bl", |j| {
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(2);
        s.completions = Some(4);
        s.backoff_limit = Some(1);
    })
    .await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, all, Outcome::Fail(3)).await;
    let end = twins.assert_same_end("Failed").await;
    assert_eq!(end.failed, Some(2));
}

#[tokio::test]
async fn active_deadline_exceeded() {
    let env = TestEnv::new("diff-deadline").await;
    let twins = Twins::create(&env, "dl", |j| {
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(2);
        s.completions = Some(2);
        s.active_deadline_seconds = Some(3);
    })
    .await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, |i, _| i == 0, Outcome::Ready).await;
    let end = twins.assert_same_end("Failed").await;
    let reason = end
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.reason);
    assert_eq!(reason.as_deref(), Some("DeadlineExceeded"));
}

#[tokio::test]
async fn suspended_then_resumed() {
    let env = TestEnv::new("diff-suspend").await;
    let twins = Twins::create(&env, "sus", |j| {
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(2);
        s.completions = Some(2);
        s.suspend = Some(true);
    })
    .await;
    let [ours, reference] = twins
        .wait_both("Suspended", |s| has_condition(s, "Suspended"))
        .await;
    assert_eq!(comparable(&ours), comparable(&reference));
    assert!(env.pods_of(&twins.names[0]).await.is_empty());
    twins.patch_spec(json!({"suspend": false})).await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    let suspended = end
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Suspended")
        .expect("the Suspended condition stays, False");
    assert_eq!(
        (suspended.status.as_str(), suspended.reason.as_deref()),
        ("False", Some("JobResumed"))
    );
}

#[tokio::test]
async fn suspended_while_running_deletes_pods_without_counting_them() {
    let env = TestEnv::new("diff-suspend-run").await;
    let twins = Twins::create(&env, "susrun", |j| {
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(2);
        s.completions = Some(3);
    })
    .await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, |i, _| i == 0, Outcome::Succeed).await;
    twins
        .wait_both("one succeeded", |s| s.succeeded == Some(1))
        .await;
    twins.patch_spec(json!({"suspend": true})).await;
    let [ours, reference] = twins
        .wait_both("Suspended with no pods left", |s| {
            has_condition(s, "Suspended")
                && s.active.unwrap_or(0) == 0
                && s.terminating.unwrap_or(0) == 0
        })
        .await;
    assert_eq!(comparable(&ours), comparable(&reference));
    assert_eq!(ours.failed.unwrap_or(0), 0);
    twins.patch_spec(json!({"suspend": false})).await;
    let pods = twins.active(2).await;
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    twins.assert_same_end("Complete").await;
}

#[tokio::test]
async fn completions_unset_completes_after_the_first_success_and_the_rest_finish() {
    let env = TestEnv::new("diff-nocompl").await;
    let twins = Twins::create(&env, "wq", |j| {
        j.spec.as_mut().unwrap().parallelism = Some(3);
    })
    .await;
    let pods = twins.active(3).await;
    twins.each_pod(&pods, |i, _| i == 0, Outcome::Succeed).await;
    twins
        .wait_both("one succeeded", |s| s.succeeded == Some(1))
        .await;
    // No replacement pods once one has succeeded.
    let pods = twins.active(2).await;
    twins.each_pod(&pods, all, Outcome::Succeed).await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.succeeded, Some(3));
}

#[tokio::test]
async fn parallelism_scaled_down_mid_run() {
    let env = TestEnv::new("diff-scale").await;
    let twins = Twins::create(&env, "scale", |j| {
        let s = j.spec.as_mut().unwrap();
        s.parallelism = Some(3);
        s.completions = Some(4);
    })
    .await;
    let pods = twins.active(3).await;
    twins.each_pod(&pods, |i, _| i == 0, Outcome::Ready).await;
    twins.wait_both("ready=1", |s| s.ready == Some(1)).await;
    twins.patch_spec(json!({"parallelism": 1})).await;
    let pods = twins.active(1).await;
    // The least advanced go first: the ready pod stays.
    for job_pods in &pods {
        assert!(job_pods[0].status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
    }
    let [ours, reference] = twins
        .wait_both("active=1, terminating=0", |s| {
            s.active == Some(1) && s.terminating.unwrap_or(0) == 0
        })
        .await;
    assert_eq!(comparable(&ours), comparable(&reference));
    for k in 1..=4 {
        let pods = twins.active(1).await;
        twins.each_pod(&pods, all, Outcome::Succeed).await;
        twins
            .wait_both(&format!("succeeded={k}"), move |s| s.succeeded == Some(k))
            .await;
    }
    let end = twins.assert_same_end("Complete").await;
    assert_eq!(end.succeeded, Some(4));
}
