//! A second local control plane with a real node (containerd, kubelet, kube-proxy: see
//! tests/cluster/node-up.sh) and no kwok node, for the tests that need real containers:
//! jobkeeper's own Deployment, the sample Jobs, and kubelet behaviour kwok cannot show.
//! Every pod scheduled there runs for real. Its apiserver writes an audit log
//! (`audit.log` in its folder).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kube::Client;

use super::{client_for, start_cluster};

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
