//! One local control plane per client limit (tests/cluster/up.sh with an audit log), and
//! the jobkeeper process that runs against it. Both are torn down on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use crate::procfs;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub qps: f32,
    pub burst: u32,
}

impl Limit {
    pub fn parse(s: &str) -> anyhow::Result<Limit> {
        let (q, b) = s
            .split_once(':')
            .with_context(|| format!("{s:?}: expected QPS:BURST"))?;
        Ok(Limit {
            qps: q.parse()?,
            burst: b.parse()?,
        })
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.qps, self.burst)
    }

    pub fn slug(&self) -> String {
        format!("{}-{}", self.qps, self.burst)
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub admin: kube::Client,
    pub ceiling: kube::Client,
    _down: DownOnDrop,
}

/// Runs tests/cluster/down.sh when dropped: on success, error and Ctrl-C alike.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let status = std::process::Command::new("tests/cluster/down.sh")
            .arg(&self.0)
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            warn!(dir = %self.0.display(), "tests/cluster/down.sh failed");
        }
    }
}

pub struct Settings<'a> {
    pub limit: Limit,
    pub controllers: &'a str,
    pub pod_start_ms: u64,
    pub pod_run_ms: u64,
}

impl Cluster {
    pub async fn up(dir: &Path, s: &Settings<'_>) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        // A leftover from an interrupted run.
        let _ = std::fs::remove_file(dir.join("audit.log"));
        info!(dir = %dir.display(), limit = %s.limit.label(), "starting the control plane");
        let guard = DownOnDrop(dir.clone());
        let status = tokio::process::Command::new("tests/cluster/up.sh")
            .arg(&dir)
            .env("AUDIT", "1")
            .env("KWOK_NODES", "1")
            .env("KWOK_POD_START_MS", s.pod_start_ms.to_string())
            .env("KWOK_POD_RUN_MS", s.pod_run_ms.to_string())
            .env("KCM_CONTROLLERS", s.controllers)
            .env(
                "KCM_EXTRA_ARGS",
                format!(
                    "--kube-api-qps {} --kube-api-burst {}",
                    s.limit.qps, s.limit.burst
                ),
            )
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
            ceiling: client(&dir.join("ceiling.kubeconfig")).await?,
            dir,
            _down: guard,
        })
    }

    pub fn pid(&self, component: &str) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(self.dir.join("pids").join(component))
            .with_context(|| format!("no pid file for {component}"))?;
        let pid: u32 = text.trim().parse()?;
        let name = procfs::command_name(pid);
        // setsid execs the component in place; make sure the pid is the component
        // (comm is cut at 15 characters).
        if name.is_empty() || !component.starts_with(&name) {
            bail!("pid {pid} of {component} is {name:?}");
        }
        Ok(pid)
    }
}

/// A client from a kubeconfig file (60 s read timeout).
pub async fn client(path: &Path) -> anyhow::Result<kube::Client> {
    crate::shared::client(path, Duration::from_secs(60)).await
}

pub use crate::shared::free_port;

/// The jobkeeper process under test, killed on drop.
pub struct Jobkeeper {
    child: tokio::process::Child,
    pub pid: u32,
}

impl Jobkeeper {
    pub async fn start(
        bin: &Path,
        cluster: &Cluster,
        limit: Limit,
        log: &Path,
    ) -> anyhow::Result<Jobkeeper> {
        let health: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let log_file = std::fs::File::create(log)?;
        let child = tokio::process::Command::new(bin)
            .arg("--kubeconfig")
            .arg(cluster.dir.join("jobkeeper.kubeconfig"))
            .args(["--log-level", "warn", "run"])
            .args(["--kube-api-qps", &limit.qps.to_string()])
            .args(["--kube-api-burst", &limit.burst.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--health-addr", &health.to_string()])
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("jobkeeper exited at once")?;
        let mut jk = Jobkeeper { child, pid };
        for _ in 0..300 {
            if let Some(status) = jk.child.try_wait()? {
                bail!("jobkeeper exited: {status}; see {}", log.display());
            }
            if http_get(health, "/readyz")
                .await
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return Ok(jk);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("jobkeeper not ready after 30 s; see {}", log.display())
    }

    pub async fn stop(mut self) {
        // SIGTERM for a graceful stop; kill_on_drop sends SIGKILL if it lingers.
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let timeout = Duration::from_secs(2);
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        Some(buf)
    })
    .await
    .ok()?
}
