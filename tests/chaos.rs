//! The chaos run at a small size (chaos/, `make chaos` for the full one): 30 Jobs and
//! their twins while jobkeeper is SIGKILLed three times and the kube-apiserver restarts
//! once, in managedBy mode, on a control plane of its own (target/test-cluster-chaos: it
//! restarts the apiserver, which the other tests' cluster must not see). The program
//! exits non-zero on any violation: a final status unlike the built-in controller's, an
//! over-count, a duplicate pod, a leaked tracking finalizer, a 422 on jobs/status or a
//! changed user field.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn chaos_small_managed_by() {
    let out = repo().join("target/chaos-test");
    let cluster = repo().join("target/test-cluster-chaos");
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_jobkeeper-chaos"))
        .args(["--mode", "managed-by", "--jobs", "30", "--kills", "3"])
        .args([
            "--kill-interval-s",
            "6",
            "--apiserver-restarts",
            "1",
            "--etcd-restarts",
            "0",
        ])
        .args(["--settle-timeout-s", "240"])
        .arg("--out")
        .arg(&out)
        .arg("--cluster-dir")
        .arg(&cluster)
        .arg("--jobkeeper-bin")
        .arg(env!("CARGO_BIN_EXE_jobkeeper"))
        .current_dir(repo())
        .status()
        .expect("running jobkeeper-chaos");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    assert!(
        status.success(),
        "the chaos run found violations ({status}):\n{report}"
    );
    assert!(
        report.contains("| controller kills (SIGKILL) | 3 |"),
        "the run did not kill the controller three times:\n{report}"
    );
    assert!(
        report.contains("| kube-apiserver restarts | 1 |"),
        "the run did not restart the apiserver:\n{report}"
    );
}
