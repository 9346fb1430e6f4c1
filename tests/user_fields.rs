//! Nothing a user wrote outside `.status` is changed by jobkeeper's writes: a Job created
//! with `kubectl apply` keeps its `last-applied-configuration`, every label and annotation
//! and the other managers' managedFields through its whole life, so the next `kubectl
//! apply` still has the base of its three-way merge and prunes what the file dropped.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use k8s_openapi::api::batch::v1::Job;
use support::*;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The Job's manifest, as a user keeps it in a file; `extra_annotation` is the field the
/// second apply drops.
fn manifest(name: &str, extra_annotation: bool) -> String {
    let extra = if extra_annotation {
        "\n    example.com/drop-me: \"soon\""
    } else {
        ""
    };
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  labels:
    team: batch
  annotations:
    example.com/note: "written by hand"{extra}
spec:
  managedBy: {MANAGED_BY}
  completions: 2
  parallelism: 1
  template:
    metadata:
      annotations:
        jobkeeper.dev/run-ms: "1500"
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: registry.k8s.io/e2e-test-images/agnhost:2.53
"#
    )
}

fn kubectl_apply(namespace: &str, manifest: &str) {
    let mut child = Command::new(cluster_bin("kubectl"))
        .arg("--kubeconfig")
        .arg(cluster_dir().join("admin.kubeconfig"))
        .args(["apply", "--namespace", namespace, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .expect("kubectl's stdin")
        .write_all(manifest.as_bytes())
        .expect("writing the manifest");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        !warnings.contains("missing the kubectl.kubernetes.io/last-applied-configuration"),
        "kubectl found no base for its merge: {warnings}"
    );
}

/// What of the Job's metadata a user or another manager wrote.
#[derive(Debug, PartialEq)]
struct UserFields {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    /// (manager, operation, subresource) of every managedFields entry.
    managers: BTreeSet<(String, String, String)>,
}

fn user_fields(job: &Job) -> UserFields {
    let managers = job
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
                m.subresource.clone().unwrap_or_default(),
            )
        })
        .collect();
    UserFields {
        labels: job.metadata.labels.clone().unwrap_or_default(),
        annotations: job.metadata.annotations.clone().unwrap_or_default(),
        managers,
    }
}

/// Everything in `before` is still in `now` (jobkeeper may add its own managedFields
/// entry for the status; it may remove nothing).
fn assert_kept(before: &UserFields, now: &Job, when: &str) {
    let now = user_fields(now);
    assert_eq!(before.labels, now.labels, "{when}: labels changed");
    assert_eq!(
        before.annotations, now.annotations,
        "{when}: annotations changed"
    );
    let lost: Vec<_> = before.managers.difference(&now.managers).collect();
    assert!(
        lost.is_empty(),
        "{when}: managedFields entries lost: {lost:?}"
    );
}

#[tokio::test]
async fn kubectl_applied_job_keeps_last_applied_labels_annotations_and_managers() {
    let env = TestEnv::new("user-fields").await;
    kubectl_apply(&env.ns, &manifest("applied", true));
    let created = env.job("applied").await;
    let before = user_fields(&created);
    assert!(before.annotations.contains_key(LAST_APPLIED));
    assert!(before.labels.contains_key("team"));

    let running = env
        .wait_status("applied", "active=1", |s| s.active == Some(1))
        .await;
    assert!(running.start_time.is_some());
    let job = env.job("applied").await;
    assert_kept(&before, &job, "after the first status write");
    assert!(
        user_fields(&job)
            .managers
            .iter()
            .any(|(_, _, sub)| sub == "status"),
        "the status write is on record as a status update"
    );

    env.wait_condition("applied", "Complete").await;
    assert_kept(&before, &env.job("applied").await, "once Complete");

    // The next apply drops an annotation from the file: kubectl prunes it, which it can
    // do only from the last-applied configuration.
    kubectl_apply(&env.ns, &manifest("applied", false));
    let reapplied = user_fields(&env.job("applied").await);
    assert!(!reapplied.annotations.contains_key("example.com/drop-me"));
    assert_eq!(
        reapplied
            .annotations
            .get("example.com/note")
            .map(String::as_str),
        Some("written by hand")
    );
    assert_eq!(
        reapplied.labels.get("team").map(String::as_str),
        Some("batch")
    );
}
