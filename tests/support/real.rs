//! A second local control plane with a real node (containerd, kubelet, kube-proxy: see
//! tests/cluster/node-up.sh) and no kwok node, for the tests that need real containers:
//! jobkeeper's own Deployment, the sample Jobs, and kubelet behaviour kwok cannot show.
//! Every pod scheduled there runs for real. Its apiserver writes an audit log
//! (`audit.log` in its folder).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kube::Client;

use super::{client_for, repo_root};

/// The real-node control plane's folder: `JOBKEEPER_TEST_REAL_CLUSTER`, else
/// `target/test-cluster-real`. Started once, shared by every test binary.
pub fn real_cluster_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("JOBKEEPER_TEST_REAL_CLUSTER")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/test-cluster-real"));
        std::fs::create_dir_all(&dir).expect("creating the real cluster folder");
        let lock = File::create(dir.join(".lock")).expect("creating the cluster lock");
        lock.lock().expect("locking the cluster folder");
        let status = Command::new(repo_root().join("tests/cluster/up.sh"))
            .arg(&dir)
            .env("REAL_NODE", "1")
            .env("KWOK_NODES", "0")
            .env("AUDIT", "1")
            .stdout(Stdio::null())
            .status()
            .expect("running tests/cluster/up.sh");
        assert!(status.success(), "REAL_NODE=1 tests/cluster/up.sh failed");
        lock.unlock().ok();
        dir
    })
}

pub async fn real_admin_client() -> Client {
    client_for(&real_cluster_dir().join("admin.kubeconfig")).await
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
