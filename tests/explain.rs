//! `jobkeeper explain` against the real control plane: a controller syncs the Job, the pod
//! driver moves its pods, and the explain binary must tell the rule and the next step that
//! match what the controller is doing.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// Runs `jobkeeper explain ns/job` with the admin kubeconfig; returns (success, stdout, stderr).
fn run_explain(ns: &str, job: &str, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(jobkeeper_binary())
        .arg("--kubeconfig")
        .arg(cluster_dir().join("admin.kubeconfig"))
        .arg("explain")
        .arg(format!("{ns}/{job}"))
        .args(extra)
        .output()
        .expect("running jobkeeper explain");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn explain(env: &TestEnv, job: &str) -> String {
    let (ok, stdout, stderr) = run_explain(&env.ns, job, &[]);
    assert!(ok, "explain {job} failed: {stderr}");
    stdout
}

/// The value of the first line starting with `label` (the label column is 12 wide).
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(label) && l.len() >= 12)
        .map(|l| &l[12..])
        .unwrap_or_else(|| panic!("no {label} line in:\n{text}"))
}

/// Explains until `check` holds: the controller's writes land a moment after the pod
/// driver's, and explain reads the same state the controller will next see.
async fn explain_until(
    env: &TestEnv,
    job: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let mut last = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = explain(env, job);
            if check(&text) {
                return text;
            }
            last = text;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!("explain {job}: timed out waiting for {what}; last output:\n{last}")
    })
}

#[tokio::test]
async fn explain_a_running_job() {
    let env = TestEnv::new("explain-running").await;
    let mut job = driven_job("busy", Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    spec.completions = Some(3);
    spec.parallelism = Some(2);
    env.create_job(&job).await;
    let pods = env.wait_active("busy", 2).await;
    env.set_ready(&pods[0]).await;
    env.wait_status("busy", "active=2 ready=1", |s| {
        s.active == Some(2) && s.ready == Some(1)
    })
    .await;

    let text = explain_until(&env, "busy", "nothing to do", |t| {
        field(t, "Next") == "nothing until a pod or the Job changes"
    })
    .await;
    assert_eq!(field(&text, "Job"), format!("{}/busy", env.ns), "{text}");
    assert_eq!(
        field(&text, "Owner"),
        format!("jobkeeper (spec.managedBy {MANAGED_BY})")
    );
    assert_eq!(
        field(&text, "Spec"),
        "completions 3, parallelism 2, NonIndexed, backoffLimit 6, no deadline, not suspended"
    );
    assert_eq!(
        field(&text, "Status"),
        "active 2, ready 1, terminating 0, succeeded 0, failed 0"
    );
    assert_eq!(
        field(&text, "Rule"),
        "0 of 3 completions; backoffLimit 6, 0 failures counted"
    );
    assert_eq!(field(&text, "Pods"), "2 pods (1 pending, 1 ready)");
    let ready = pods[0].metadata.name.as_deref().unwrap();
    let pending = pods[1].metadata.name.as_deref().unwrap();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("ready") && l.contains(ready)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("pending") && l.contains(pending)),
        "{text}"
    );
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn explain_a_job_in_pod_failure_backoff() {
    let env = TestEnv::new("explain-backoff").await;
    let pod = env.first_pod_of_a_job_that_may_fail("flaky").await;
    env.fail(&pod, 3).await;
    env.wait_status("flaky", "failed=1", |s| s.failed == Some(1))
        .await;

    // The failed pod is counted and its finalizer gone; the replacement waits 10 s.
    let text = explain_until(&env, "flaky", "the backoff", |t| {
        field(t, "Next").starts_with("nothing now: the pod failure backoff")
    })
    .await;
    let rule = field(&text, "Rule");
    assert!(
        rule.starts_with("0 of 1 completions; backoffLimit 4, 1 failure counted; next pod in "),
        "{text}"
    );
    assert!(
        rule.ends_with(" s (10 s backoff after 1 failure)"),
        "{text}"
    );
    let failed = pod.metadata.name.as_deref().unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(failed))
        .unwrap_or_else(|| panic!("no line for {failed}:\n{text}"));
    assert!(line.trim_start().starts_with("failed"), "{line}");
    assert!(line.contains("exit 3 (Error)"), "{line}");
    assert!(!line.contains("not counted yet"), "{line}");
    assert!(env.active_pods("flaky").await.is_empty());

    // Once the backoff is over the controller creates the replacement, as explain said.
    let replacement = env.wait_active("flaky", 1).await;
    let text = explain_until(&env, "flaky", "the replacement pod", |t| {
        field(t, "Pods") == "2 pods (1 pending, 1 failed)"
    })
    .await;
    assert!(
        text.contains(replacement[0].metadata.name.as_deref().unwrap()),
        "{text}"
    );
    assert_eq!(
        field(&text, "Rule"),
        "0 of 1 completions; backoffLimit 4, 1 failure counted"
    );
    env.assert_no_rejected_status().await;
}

/// A failed pod whose finishedAt a node clock put on the last day of year 9999, past what
/// k8s-openapi's `Time` holds: the pod list failed to decode, and explain with it.
#[tokio::test]
async fn explain_a_job_whose_pod_finished_on_the_last_day_of_year_9999() {
    let env = TestEnv::new("explain-last-day").await;
    let pod = env.first_pod_of_a_job_that_may_fail("skewed").await;
    env.fail_finished_at(&pod, "9999-12-31T23:59:59Z").await;
    env.wait_status("skewed", "failed=1", |s| s.failed == Some(1))
        .await;
    let text = explain(&env, "skewed");
    let failed = pod.metadata.name.as_deref().unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(failed))
        .unwrap_or_else(|| panic!("no line for {failed}:\n{text}"));
    assert!(line.trim_start().starts_with("failed"), "{line}");
    assert!(line.contains("exit 1 (Error)"), "{line}");
    assert_eq!(
        field(&text, "Rule").split(';').next(),
        Some("0 of 1 completions"),
        "{text}"
    );
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn explain_a_suspended_job() {
    let env = TestEnv::new("explain-suspended").await;
    let mut job = driven_job("paused", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().suspend = Some(true);
    env.create_job(&job).await;
    env.wait_condition("paused", "Suspended").await;

    let text = explain(&env, "paused");
    assert!(field(&text, "Spec").ends_with(", suspended"), "{text}");
    assert_eq!(field(&text, "Rule"), "Job suspended: no pods run");
    assert_eq!(field(&text, "Pods"), "none");
    assert!(
        field(&text, "Conditions").starts_with("Suspended=True  JobSuspended  Job suspended"),
        "{text}"
    );
    assert_eq!(
        field(&text, "Next"),
        "nothing until a pod or the Job changes"
    );
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn explain_a_job_past_its_backoff_limit() {
    let env = TestEnv::new("explain-failed").await;
    let mut job = driven_job("doomed", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().backoff_limit = Some(0);
    env.create_job(&job).await;
    let pods = env.wait_active("doomed", 1).await;
    env.fail(&pods[0], 1).await;
    env.wait_condition("doomed", "Failed").await;

    let text = explain_until(&env, "doomed", "the finished Job", |t| {
        field(t, "Next").starts_with("nothing: ")
    })
    .await;
    assert_eq!(
        field(&text, "Rule"),
        "the Job is finished (Failed: BackoffLimitExceeded)"
    );
    assert_eq!(
        field(&text, "Next"),
        "nothing: the Job is finished (Failed: BackoffLimitExceeded)"
    );
    assert_eq!(
        field(&text, "Status"),
        "active 0, ready 0, terminating 0, succeeded 0, failed 1"
    );
    let conditions: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Conditions"))
        .take(2)
        .map(|l| l[12..].split("  ").next().unwrap_or(""))
        .collect();
    assert_eq!(conditions, ["FailureTarget=True", "Failed=True"], "{text}");
    assert!(
        text.contains("Job has reached the specified backoff limit"),
        "{text}"
    );
    env.assert_no_rejected_status().await;
}

#[tokio::test]
async fn explain_a_job_jobkeeper_does_not_own() {
    let env = TestEnv::without_controller("explain-theirs").await;
    env.create_job(&driven_job("builtin", None)).await;
    env.wait_active("builtin", 1).await;

    let text = explain(&env, "builtin");
    assert_eq!(
        field(&text, "Owner"),
        "the built-in job controller (spec.managedBy unset)"
    );
    assert_eq!(
        field(&text, "Next"),
        "nothing from jobkeeper: the built-in job controller (spec.managedBy unset) syncs this Job"
    );
    assert!(!text.contains("\nRule"), "{text}");
    assert!(field(&text, "Pods").starts_with("1 pod"), "{text}");

    // Told that jobkeeper runs with --all-jobs, explain claims it.
    let (ok, text, stderr) = run_explain(&env.ns, "builtin", &["--all-jobs"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        field(&text, "Owner"),
        "jobkeeper (spec.managedBy unset; --all-jobs)"
    );
}

#[tokio::test]
async fn explain_a_missing_job_fails_with_its_name() {
    let env = TestEnv::without_controller("explain-missing").await;
    let (ok, stdout, stderr) = run_explain(&env.ns, "nope", &[]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains(&format!("Job {}/nope not found", env.ns)),
        "{stderr}"
    );
}
