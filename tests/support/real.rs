//! A second local control plane with a real node (containerd, kubelet, kube-proxy: see
//! tests/cluster/node-up.sh) and no kwok node, for the tests that need real containers:
//! jobkeeper's own Deployment, the sample Jobs, and kubelet behaviour kwok cannot show.
//! Every pod scheduled there runs for real. Its apiserver writes an audit log
//! (`audit.log` in its folder).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kube::Client;

use super::{client_for, job_with_pods, start_cluster};

/// The real-node control plane's folder: `JOBKEEPER_TEST_REAL_CLUSTER`, else
/// `target/test-cluster-real`. Started once, shared by every test binary.
pub fn real_cluster_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        start_cluster(
            "JOBKEEPER_TEST_REAL_CLUSTER",
            "target/test-cluster-real",
            &[("REAL_NODE", "1"), ("KWOK_NODES", "0"), ("AUDIT", "1")],
        )
    })
}

pub async fn real_admin_client() -> Client {
    client_for(&real_cluster_dir().join("admin.kubeconfig")).await
}

/// The label node-up.sh gives the real node (value `"true"`).
pub const REAL_NODE_LABEL: &str = "jobkeeper.dev/real-node";
/// The image the real node has (imported, never pulled: the node has no registry access).
pub const REAL_IMAGE: &str = "busybox:1.35";

/// A Job whose pods run for real on the real node: one busybox container `main` running
/// `sh -c script`, restartPolicy Never, a 2 s termination grace period (so leftover pods go
/// quickly when the namespace is deleted; shape it longer where termination matters).
pub fn real_job(name: &str, managed_by: Option<&str>, script: &str) -> Job {
    let pod = PodSpec {
        node_selector: Some(BTreeMap::from([(REAL_NODE_LABEL.into(), "true".into())])),
        restart_policy: Some("Never".into()),
        termination_grace_period_seconds: Some(2),
        containers: vec![Container {
            name: "main".into(),
            image: Some(REAL_IMAGE.into()),
            image_pull_policy: Some("IfNotPresent".into()),
            command: Some(vec!["sh".into(), "-c".into(), script.into()]),
            ..Default::default()
        }],
        ..Default::default()
    };
    job_with_pods(name, managed_by, "real", pod)
}

/// A script that runs until it gets SIGTERM, then takes `stop_seconds` to stop and exits
/// with `exit_code` (the shell is PID 1, which ignores a SIGTERM it does not trap).
pub fn run_until_term(stop_seconds: u32, exit_code: i32) -> String {
    format!("trap 'sleep {stop_seconds}; exit {exit_code}' TERM; sleep 600 & wait")
}

/// The real node's `ctr` with the kubelet's containerd namespace (`k8s.io`); its stdout.
pub fn node_ctr(args: &[&str]) -> String {
    let dir = real_cluster_dir();
    let bin = std::fs::read_to_string(dir.join("node/bin")).expect("DIR/node/bin: no real node");
    let out = Command::new(Path::new(bin.trim()).join("ctr"))
        .arg("--address")
        .arg(dir.join("node/containerd.sock"))
        .args(["-n", "k8s.io"])
        .args(args)
        .output()
        .expect("running ctr");
    super::expect_ok(&out, &format!("ctr {}", args.join(" ")))
}

/// The host PID of a running container's process, by the `containerd://ID` the pod's
/// container status names.
pub fn container_host_pid(container_id: &str) -> u32 {
    let id = container_id
        .strip_prefix("containerd://")
        .unwrap_or_else(|| panic!("not a containerd container: {container_id}"));
    let tasks = node_ctr(&["tasks", "ls"]);
    tasks
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next()? == id).then(|| fields.next()?.parse().ok())?
        })
        .next()
        .unwrap_or_else(|| panic!("no containerd task {id} in:\n{tasks}"))
}

/// The apiserver's audit events (`audit.log`, one JSON object a line) about objects in
/// `namespace`.
pub fn audit_events_in(namespace: &str) -> Vec<serde_json::Value> {
    let path = real_cluster_dir().join("audit.log");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let quoted = format!("\"{namespace}\"");
    text.lines()
        .filter(|l| l.contains(&quoted))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["objectRef"]["namespace"] == namespace)
        .collect()
}
