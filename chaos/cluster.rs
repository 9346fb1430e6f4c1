//! The control plane (tests/cluster/up.sh with an audit log), restarts of its components
//! (tests/cluster/restart.sh), and the jobkeeper processes the chaos kills.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use crate::Mode;

use crate::shared::repo_root;

/// KCM's controllers in all-jobs mode: what kind runs, minus the job controller.
const WITHOUT_JOB_CONTROLLER: &str = "*,bootstrapsigner,tokencleaner,-job";

pub struct Cluster {
    pub dir: PathBuf,
    pub admin: kube::Client,
    _down: Option<DownOnDrop>,
}

/// Runs tests/cluster/down.sh when dropped: on success, error and Ctrl-C alike.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let status = std::process::Command::new(repo_root().join("tests/cluster/down.sh"))
            .arg(&self.0)
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            warn!(dir = %self.0.display(), "tests/cluster/down.sh failed");
        }
    }
}

impl Cluster {
    /// A fresh control plane in `dir` (an old one there is stopped first, so the audit
    /// log holds this run only).
    pub async fn up(dir: &Path, mode: Mode, keep: bool) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        run_script("down.sh", &dir).await?;
        let _ = std::fs::remove_file(dir.join("audit.log"));
        info!(dir = %dir.display(), ?mode, "starting the control plane");
        let guard = (!keep).then(|| DownOnDrop(dir.clone()));
        let mut up = tokio::process::Command::new(repo_root().join("tests/cluster/up.sh"));
        up.arg(&dir).env("AUDIT", "1").env("KWOK_NODES", "1");
        if mode == Mode::AllJobs {
            up.env("KCM_CONTROLLERS", WITHOUT_JOB_CONTROLLER);
        }
        if mode == Mode::Deployment {
            up.env("REAL_NODE", "1");
        }
        let status = up
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .context("running tests/cluster/up.sh")?;
        if !status.success() {
            bail!("tests/cluster/up.sh failed ({status})");
        }
        Ok(Cluster {
            admin: client(&dir.join("admin.kubeconfig")).await?,
            dir,
            _down: guard,
        })
    }

    /// Stops `component` and starts it again with the same command line; returns once it
    /// serves again.
    pub async fn restart(&self, component: &str) -> anyhow::Result<()> {
        let status = tokio::process::Command::new(repo_root().join("tests/cluster/restart.sh"))
            .arg(&self.dir)
            .arg(component)
            .stdout(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("restarting {component} failed ({status})");
        }
        Ok(())
    }
}

async fn run_script(name: &str, dir: &Path) -> anyhow::Result<()> {
    tokio::process::Command::new(repo_root().join("tests/cluster").join(name))
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    Ok(())
}

/// A client from a kubeconfig file (30 s read timeout).
pub async fn client(path: &Path) -> anyhow::Result<kube::Client> {
    crate::shared::client(path, Duration::from_secs(30)).await
}

pub use crate::shared::free_port;

/// A kubeconfig that authenticates as admin and acts as jobkeeper's ServiceAccount, with
/// `replica=<incarnation>` as user extra: the audit log then names the process behind
/// every request (impersonatedUser.extra), which proves who wrote what.
pub fn impersonating_kubeconfig(dir: &Path, incarnation: &str) -> anyhow::Result<PathBuf> {
    let mut kc = kube::config::Kubeconfig::read_from(dir.join("admin.kubeconfig"))?;
    let auth = kc
        .auth_infos
        .first_mut()
        .and_then(|a| a.auth_info.as_mut())
        .context("admin.kubeconfig has no user")?;
    auth.impersonate = Some(crate::audit::JOBKEEPER_USER.into());
    auth.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        "system:serviceaccounts:jobkeeper-system".into(),
        "system:authenticated".into(),
    ]);
    auth.impersonate_user_extra = Some(
        [(
            crate::audit::REPLICA_EXTRA.to_string(),
            vec![incarnation.to_string()],
        )]
        .into(),
    );
    let path = dir.join(format!("replica-{incarnation}.kubeconfig"));
    std::fs::write(&path, serde_json::to_vec_pretty(&kc)?)?;
    Ok(path)
}
