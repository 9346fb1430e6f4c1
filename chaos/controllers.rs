//! The jobkeeper of a run: one process, two with leader election, or the Deployment from
//! deploy/ on the real node ([`InCluster`]). A process kill is a SIGKILL (of the leader,
//! with two) and an immediate restart as a new incarnation (`a1`, `a2`, ...), each with
//! its own log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jobkeeper::edge::leader::STEPPED_DOWN;
use tracing::info;

use crate::Mode;
use crate::cluster::{Cluster, free_port, impersonating_kubeconfig};
use crate::deployment::InCluster;
use crate::scenario::NAMESPACE;

/// The leader election Lease's duration with two replicas: short, so a killed leader's
/// successor takes over within seconds; the renew deadline and retry period must be
/// shorter in turn (jobkeeper refuses to start otherwise).
const LEASE: &str = "6s";
const RENEW_DEADLINE: &str = "4s";
const RETRY_PERIOD: &str = "500ms";

struct Replica {
    name: &'static str,
    incarnation: u32,
    child: tokio::process::Child,
    metrics_port: u16,
}

/// Who syncs the run's Jobs, and how a kill takes it down.
pub enum Controllers {
    Processes(Processes),
    InCluster(InCluster),
}

impl Controllers {
    pub async fn start(
        mode: Mode,
        cluster: &Cluster,
        bin: &Path,
        logs: &Path,
    ) -> anyhow::Result<Controllers> {
        Ok(match mode {
            Mode::Deployment => Controllers::InCluster(
                InCluster::install(&cluster.dir, logs, cluster.admin.clone()).await?,
            ),
            _ => Controllers::Processes(Processes::start(mode, &cluster.dir, bin, logs)?),
        })
    }

    /// Takes one jobkeeper down; false if there was none to take (see [`InCluster`]).
    pub async fn kill_one(&mut self) -> anyhow::Result<bool> {
        match self {
            Controllers::Processes(p) => p.kill_one().await.map(|()| true),
            Controllers::InCluster(c) => c.kill_one().await,
        }
    }

    /// Stops (or, in the cluster, leaves) the controllers; returns per writer (process
    /// incarnation, or pod IP) how many more terms it may have had than one.
    pub async fn stop(self) -> HashMap<String, u64> {
        match self {
            Controllers::Processes(p) => p.stop().await,
            Controllers::InCluster(c) => c.stop().await,
        }
    }
}

pub struct Processes {
    mode: Mode,
    dir: PathBuf,
    bin: PathBuf,
    logs: PathBuf,
    replicas: Vec<Replica>,
}

impl Processes {
    pub fn start(mode: Mode, dir: &Path, bin: &Path, logs: &Path) -> anyhow::Result<Processes> {
        let mut c = Processes {
            mode,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            logs: logs.to_path_buf(),
            replicas: Vec::new(),
        };
        let names: &[&'static str] = if mode == Mode::TwoReplicas {
            &["a", "b"]
        } else {
            &["a"]
        };
        for name in names {
            let r = c.spawn(name, 1)?;
            c.replicas.push(r);
        }
        Ok(c)
    }

    fn spawn(&self, name: &'static str, incarnation: u32) -> anyhow::Result<Replica> {
        let id = format!("{name}{incarnation}");
        let metrics_port = free_port()?;
        let log = std::fs::File::create(self.logs.join(format!("jobkeeper-{id}.log")))?;
        let mut cmd = tokio::process::Command::new(&self.bin);
        let kubeconfig = match self.mode {
            Mode::TwoReplicas => impersonating_kubeconfig(&self.dir, &id)?,
            _ => self.dir.join("jobkeeper.kubeconfig"),
        };
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--log-level", "info", "run", "--namespace", NAMESPACE])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--health-addr", &format!("127.0.0.1:{}", free_port()?)]);
        match self.mode {
            Mode::AllJobs => {
                cmd.arg("--all-jobs");
            }
            Mode::TwoReplicas => {
                cmd.args(["--leader-elect", "--leader-elect-lease-name", "chaos"])
                    .args(["--leader-elect-lease-duration", LEASE])
                    .args(["--leader-elect-renew-deadline", RENEW_DEADLINE])
                    .args(["--leader-elect-retry-period", RETRY_PERIOD])
                    .args(["--leader-elect-identity", name]);
            }
            _ => {}
        }
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(Replica {
            name,
            incarnation,
            child,
            metrics_port,
        })
    }

    /// SIGKILLs the process (with two replicas: the leader, waiting up to 20 s for one) and
    /// starts it again at once.
    pub async fn kill_one(&mut self) -> anyhow::Result<()> {
        self.none_exited_by_itself()?;
        let i = self.victim().await;
        let r = &mut self.replicas[i];
        r.child.start_kill().ok();
        r.child.wait().await.ok();
        info!(replica = %format!("{}{}", r.name, r.incarnation), "SIGKILLed jobkeeper");
        let (name, next) = (r.name, r.incarnation + 1);
        self.replicas[i] = self.spawn(name, next)?;
        Ok(())
    }

    /// A replica that exited without being killed (a refused flag, a crash) ends the run
    /// at once: the rest would only measure a cluster without its controller.
    fn none_exited_by_itself(&mut self) -> anyhow::Result<()> {
        for r in &mut self.replicas {
            if let Some(status) = r.child.try_wait()? {
                anyhow::bail!(
                    "jobkeeper {}{} exited by itself ({status}); see jobkeeper-{}{}.log",
                    r.name,
                    r.incarnation,
                    r.name,
                    r.incarnation
                );
            }
        }
        Ok(())
    }

    async fn victim(&self) -> usize {
        if self.replicas.len() < 2 {
            return 0;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            for (i, r) in self.replicas.iter().enumerate() {
                if leads(r.metrics_port).await {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        0
    }

    /// Stops every process; returns how often each incarnation logged a lost lease.
    pub async fn stop(mut self) -> HashMap<String, u64> {
        for r in &mut self.replicas {
            r.child.start_kill().ok();
            r.child.wait().await.ok();
        }
        lease_losses(&self.logs)
    }
}

async fn leads(metrics_port: u16) -> bool {
    let metrics = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let timeout = Duration::from_secs(2);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .await;
    matches!(metrics, Ok(Some(text)) if text.lines().any(|l| l.trim() == "jobkeeper_leader 1"))
}

/// How many times a process stepped down as leader, from its log: its writes stop there,
/// and a later term of the same process is a new one, not a second writer.
pub fn steps_down(log: &str) -> u64 {
    log.matches(STEPPED_DOWN).count() as u64
}

fn lease_losses(logs: &Path) -> HashMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(logs) else {
        return HashMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let id = file
                .strip_prefix("jobkeeper-")?
                .strip_suffix(".log")?
                .to_string();
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((id, steps_down(&text)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_downs_are_counted_by_the_line_jobkeeper_logs() {
        let log = format!("x WARN {STEPPED_DOWN}; standing by\ny INFO became the leader\n");
        assert_eq!(steps_down(&log), 1);
        assert_eq!(steps_down("could not renew the leader lease; retrying"), 0);
    }
}
