//! The Deployment mode: jobkeeper installed as users install it, `make image`'s image
//! loaded into the real node and `kubectl apply -k deploy/`, its two pods running real
//! containers on that node (REAL_NODE=1, so root). The chaos Jobs' pods stay on the kwok
//! node: the real node is tainted, and the Deployment alone tolerates the taint.
//!
//! A kill takes the leader down, by turns: its pod deleted (the ReplicaSet makes a new
//! one), or its container's process SIGKILLed on the host (the kubelet restarts it in the
//! same pod). Each process's log is saved before it goes. Writes are told apart in the
//! audit log by source IP, one per pod.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::controllers::steps_down;
use crate::shared::repo_root;

pub const SYSTEM_NS: &str = "jobkeeper-system";
const SELECTOR: &str = "app.kubernetes.io/name=jobkeeper,app.kubernetes.io/component=controller";
const REAL_NODE_LABEL: &str = "jobkeeper.dev/real-node";
/// The Lease of deploy/ (jobkeeper's default name, in the controller's namespace).
const LEASE: &str = "jobkeeper";

/// The Deployment's arguments with the two-replica mode's leader election timing (a 6 s
/// lease instead of 15 s), so a SIGKILLed leader is replaced within the kill interval.
const ARGS: [&str; 9] = [
    "run",
    "--leader-elect",
    "--log-format=json",
    "--leader-elect-lease-duration",
    "6s",
    "--leader-elect-renew-deadline",
    "4s",
    "--leader-elect-retry-period",
    "500ms",
];

pub struct InCluster {
    dir: PathBuf,
    logs: PathBuf,
    client: kube::Client,
    kills: u32,
    /// Per pod IP: processes beyond the first that ran there (restarted containers).
    restarts: HashMap<String, u64>,
    /// Per container (its ID): its pod's IP and the lost leases its saved log tells of.
    losses: HashMap<String, (String, u64)>,
}

impl InCluster {
    pub async fn install(dir: &Path, logs: &Path, client: kube::Client) -> anyhow::Result<Self> {
        taint_the_real_node(&client).await?;
        load_image(dir).await?;
        kubectl(dir, &["apply", "-k", "deploy/"]).await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM_NS);
        let on_the_real_node = json!({"spec": {"template": {"spec": {
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "jobkeeper", "args": ARGS}],
        }}}});
        deployments
            .patch(
                "jobkeeper",
                &PatchParams::default(),
                &Patch::Strategic(on_the_real_node),
            )
            .await
            .context("patching the Deployment onto the real node")?;
        let c = InCluster {
            dir: dir.to_path_buf(),
            logs: logs.to_path_buf(),
            client,
            kills: 0,
            restarts: HashMap::new(),
            losses: HashMap::new(),
        };
        c.wait_for_two_ready_replicas().await?;
        c.leader(Duration::from_secs(60))
            .await
            .context("no replica took the Lease within 60 s")?;
        info!("jobkeeper installed from deploy/ on the real node");
        Ok(c)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), SYSTEM_NS)
    }

    /// Both replicas of the patched template Running and Ready, and no other.
    async fn wait_for_two_ready_replicas(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let pods = self
                .pods()
                .list(&ListParams::default().labels(SELECTOR))
                .await?;
            let ready = pods
                .items
                .iter()
                .filter(|p| {
                    on_real_node(p) && is_ready(p) && p.metadata.deletion_timestamp.is_none()
                })
                .count();
            if ready == 2 && pods.items.len() == 2 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the Deployment's two replicas were not Ready on the real node within 180 s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The pod whose process holds the Lease (holder identities are `<pod>_<random>`).
    async fn leader(&self, wait: Duration) -> Option<Pod> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), SYSTEM_NS);
        let deadline = Instant::now() + wait;
        loop {
            let holder = leases
                .get_opt(LEASE)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec?.holder_identity)
                .filter(|h| !h.is_empty());
            if let Some(holder) = holder {
                let pod = holder.rsplit_once('_').map_or(holder.as_str(), |(p, _)| p);
                if let Ok(Some(p)) = self.pods().get_opt(pod).await
                    && p.metadata.deletion_timestamp.is_none()
                    && is_ready(&p)
                {
                    return Some(p);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Takes the leader down (waiting up to 20 s for one): its pod deleted, or every other
    /// time its container's process SIGKILLed. False when no replica led to be killed.
    pub async fn kill_one(&mut self) -> anyhow::Result<bool> {
        let Some(leader) = self.leader(Duration::from_secs(20)).await else {
            warn!("no Ready replica held the Lease for 20 s; no kill this time");
            return Ok(false);
        };
        self.kills += 1;
        let name = leader.name_any();
        self.save_log(&leader, false).await;
        if self.kills % 2 == 1 {
            self.count_restarts(&leader);
            self.pods()
                .delete(&name, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting {name}"))?;
            info!(pod = %name, "deleted the leader's pod");
        } else {
            let pid = container_host_pid(&self.dir, &container_id(&leader)?).await?;
            let status = tokio::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .await?;
            if !status.success() {
                bail!("kill -KILL {pid} failed ({status})");
            }
            *self.restarts.entry(pod_ip(&leader)).or_default() += 1;
            info!(pod = %name, pid, "SIGKILLed the leader's process");
        }
        Ok(true)
    }

    /// Restarts of the container not made by a kill (a probe, a lease lost on purpose).
    fn count_restarts(&mut self, pod: &Pod) {
        let restarts = pod
            .status
            .as_ref()
            .and_then(|s| {
                s.container_statuses
                    .as_ref()?
                    .first()
                    .map(|c| c.restart_count)
            })
            .unwrap_or(0);
        let ip = pod_ip(pod);
        let entry = self.restarts.entry(ip).or_default();
        *entry = (*entry).max(u64::try_from(restarts).unwrap_or(0));
    }

    /// Saves the pod's log (or its previous container's) as jobkeeper-<pod>-<n>.log and
    /// notes the lost leases it tells of.
    async fn save_log(&mut self, pod: &Pod, previous: bool) {
        let params = LogParams {
            previous,
            ..LogParams::default()
        };
        let name = pod.name_any();
        let Ok(text) = self.pods().logs(&name, &params).await else {
            return;
        };
        let n = self.kills;
        let file = if previous {
            format!("jobkeeper-{name}-{n}-previous.log")
        } else {
            format!("jobkeeper-{name}-{n}.log")
        };
        std::fs::write(self.logs.join(file), &text).ok();
        let status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref()?.first());
        let container = if previous {
            status.and_then(|c| {
                c.last_state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .container_id
                    .clone()
            })
        } else {
            status.and_then(|c| c.container_id.clone())
        };
        if let Some(id) = container {
            let lost = steps_down(&text);
            self.losses.insert(id, (pod_ip(pod), lost));
        }
    }

    /// Saves the replicas' logs; returns, per pod IP, how many more terms its processes may
    /// have had: a restarted container is a new process, and a process that logged a lost
    /// lease may lead again.
    pub async fn stop(mut self) -> HashMap<String, u64> {
        if let Ok(pods) = self
            .pods()
            .list(&ListParams::default().labels(SELECTOR))
            .await
        {
            for pod in &pods.items {
                self.count_restarts(pod);
                self.save_log(pod, false).await;
                self.save_log(pod, true).await;
            }
        }
        let mut allowed = self.restarts.clone();
        for (ip, lost) in self.losses.values() {
            *allowed.entry(ip.clone()).or_default() += lost;
        }
        allowed
    }
}

fn on_real_node(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_selector.as_ref())
        .is_some_and(|s| s.contains_key(REAL_NODE_LABEL))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn container_id(pod: &Pod) -> anyhow::Result<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref()?.first()?.container_id.clone())
        .with_context(|| format!("{} has no running container", pod.name_any()))
}

/// Keeps every pod but the Deployment's off the real node.
async fn taint_the_real_node(client: &kube::Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let real = nodes
        .list(&ListParams::default().labels(&format!("{REAL_NODE_LABEL}=true")))
        .await?;
    let node = real
        .items
        .first()
        .context("no real node: the Deployment mode needs REAL_NODE=1 (root)")?;
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints.push(serde_json::from_value(
        json!({"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}),
    )?);
    nodes
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await?;
    Ok(())
}

/// Imports `make image`'s archive into the cluster's real node as jobkeeper:dev.
async fn load_image(dir: &Path) -> anyhow::Result<()> {
    let archive = crate::shared::image_archive();
    if !archive.exists() {
        bail!(
            "no image archive {}: run `make image` (make chaos does) or set JOBKEEPER_IMAGE_ARCHIVE",
            archive.display()
        );
    }
    script(
        "load-image.sh",
        &[
            dir.as_os_str(),
            archive.as_os_str(),
            "jobkeeper:dev".as_ref(),
        ],
    )
    .await
    .map(|_| ())
}

/// The control plane's kubectl as admin, in the repository (for `-k deploy/`).
async fn kubectl(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let bin = script("build.sh", &[]).await?;
    let out = tokio::process::Command::new(Path::new(bin.trim()).join("kubectl"))
        .arg("--kubeconfig")
        .arg(dir.join("admin.kubeconfig"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .await
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs tests/cluster/<name> with `args`; its stdout.
async fn script(name: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(repo_root().join("tests/cluster").join(name))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running tests/cluster/{name}"))?;
    if !out.status.success() {
        bail!("tests/cluster/{name} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host PID of a container's process, from the real node's containerd (`ctr tasks ls`).
async fn container_host_pid(dir: &Path, container_id: &str) -> anyhow::Result<u32> {
    let id = container_id
        .strip_prefix("containerd://")
        .with_context(|| format!("not a containerd container: {container_id}"))?;
    let bin =
        std::fs::read_to_string(dir.join("node/bin")).context("DIR/node/bin: no real node")?;
    let out = tokio::process::Command::new(Path::new(bin.trim()).join("ctr"))
        .arg("--address")
        .arg(dir.join("node/containerd.sock"))
        .args(["-n", "k8s.io", "tasks", "ls"])
        .output()
        .await
        .context("running ctr")?;
    let tasks = String::from_utf8_lossy(&out.stdout);
    tasks
        .lines()
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next()? == id).then(|| fields.next()?.parse().ok())?
        })
        .with_context(|| format!("no containerd task {id} in:\n{tasks}"))
}
