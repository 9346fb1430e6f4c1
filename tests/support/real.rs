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
