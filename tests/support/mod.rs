//! Integration-test support: a real local control plane (started once, shared by every
//! test binary), one namespace per test, a jobkeeper process per test, and a pod driver
//! that moves pods through their lifecycle via the `/status` subresource, the way
//! upstream's Job integration tests do.
#![allow(dead_code)]

pub mod proxy;
pub mod real;
#[path = "../../tools/shared.rs"]
pub mod shared;
pub mod twins;

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jobkeeper::cluster::lenient::Lenient;
use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Pod, PodCondition, PodSpec, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// The managedBy value every test controller runs with (namespaces keep tests apart).
pub const MANAGED_BY: &str = "jobkeeper.dev/job-controller";
/// Pods with this scheduler name are left alone by kube-scheduler and kwok: the tests
/// steer them.
pub const DRIVER_SCHEDULER: &str = "jobkeeper-test-driver";

pub use shared::repo_root;

/// The control plane's folder: `JOBKEEPER_TEST_CLUSTER`, else `target/test-cluster`.
pub fn cluster_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| start_cluster("JOBKEEPER_TEST_CLUSTER", "target/test-cluster", &[]))
}

/// Starts (or finds running) the control plane in the folder `$var` names, else
/// `default` under the repo, with `env` for tests/cluster/up.sh.
pub fn start_cluster(var: &str, default: &str, env: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(default));
    std::fs::create_dir_all(&dir).expect("creating the cluster folder");
    // Test binaries run in parallel; one of them starts the cluster, the others wait.
    let lock = File::create(dir.join(".lock")).expect("creating the cluster lock");
    lock.lock().expect("locking the cluster folder");
    let status = Command::new(repo_root().join("tests/cluster/up.sh"))
        .arg(&dir)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .status()
        .expect("running tests/cluster/up.sh");
    assert!(status.success(), "tests/cluster/up.sh {env:?} failed");
    lock.unlock().ok();
    dir
}

pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("reading kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

pub async fn admin_client() -> Client {
    client_for(&cluster_dir().join("admin.kubeconfig")).await
}

pub fn jobkeeper_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobkeeper"))
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_wait_for(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` every 50 ms until it returns `Some`; None after `timeout` (for a caller
/// that has more to say about a timeout than what it waited for).
pub async fn try_wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A jobkeeper process watching one namespace.
pub struct Controller {
    child: Child,
    pub metrics_port: u16,
    pub health_port: u16,
    pub log: PathBuf,
}

impl Controller {
    pub fn start(namespace: &str, extra: &[&str]) -> Controller {
        Self::start_with_kubeconfig(
            namespace,
            &cluster_dir().join("jobkeeper.kubeconfig"),
            extra,
        )
    }

    pub fn start_with_kubeconfig(namespace: &str, kubeconfig: &Path, extra: &[&str]) -> Controller {
        Self::start_in(cluster_dir(), namespace, kubeconfig, extra)
    }

    /// A controller for the control plane in `dir` (its log goes to `dir/logs`).
    pub fn start_in(dir: &Path, namespace: &str, kubeconfig: &Path, extra: &[&str]) -> Controller {
        let log = dir.join(format!("logs/jobkeeper-{namespace}-{}.log", free_port()));
        let metrics_port = free_port();
        let health_port = free_port();
        let out = File::create(&log).expect("controller log");
        let child = Command::new(jobkeeper_binary())
            .args(["--kubeconfig"])
            .arg(kubeconfig)
            .args([
                "--log-level",
                "info,jobkeeper=debug",
                "run",
                "--namespace",
                namespace,
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
            .args(extra)
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("starting jobkeeper");
        Controller {
            child,
            metrics_port,
            health_port,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    pub fn signal_term(&self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .ok();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub async fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .await
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sum of a counter over all label sets whose labels contain every `labels` pair.
    pub async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_metric(&self.metrics().await, name, labels)
    }

    /// Waits (10 s at most) until a gauge without labels reads `value`.
    pub async fn wait_gauge(&self, name: &str, value: f64) {
        let what = format!("{name} to read {value}");
        wait_for(&what, Duration::from_secs(10), || async {
            (self.counter(name, &[]).await == value).then_some(())
        })
        .await;
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A minimal HTTP/1.0 GET on loopback (status line and body).
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_at("127.0.0.1", port, path).await
}

/// A minimal HTTP/1.0 GET to `host:port` (status line and body).
pub async fn http_get_at(host: &str, port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// One test's world: a fresh namespace and (optionally) a controller watching it.
pub struct TestEnv {
    pub client: Client,
    pub ns: String,
    pub controller: Option<Controller>,
    /// The control plane's folder.
    pub cluster: &'static Path,
    /// The `spec.managedBy` this test's controller owns ([`MANAGED_BY`], except on the
    /// real node, where jobkeeper's own Deployment may be running and owns that one).
    pub managed_by: &'static str,
}

/// What the out-of-cluster controllers of the real-node tests own.
pub const REAL_NODE_TEST_MANAGED_BY: &str = "jobkeeper.dev/real-node-test";

impl TestEnv {
    /// A namespace and a jobkeeper controller for it.
    pub async fn new(name: &str) -> TestEnv {
        let mut env = Self::without_controller(name).await;
        env.controller = Some(Controller::start(&env.ns, &[]));
        env
    }

    pub async fn without_controller(name: &str) -> TestEnv {
        Self::without_controller_in(cluster_dir(), name).await
    }

    /// A namespace on the real-node control plane ([`real::real_cluster_dir`]) and a
    /// jobkeeper process (out of cluster, as the controller's identity) for it.
    pub async fn on_real_node(name: &str) -> TestEnv {
        let dir = real::real_cluster_dir();
        let mut env = Self::without_controller_in(dir, name).await;
        env.managed_by = REAL_NODE_TEST_MANAGED_BY;
        env.controller = Some(Controller::start_in(
            dir,
            &env.ns,
            &dir.join("jobkeeper.kubeconfig"),
            &["--managed-by", REAL_NODE_TEST_MANAGED_BY],
        ));
        env
    }

    /// A namespace on the control plane in `dir`, no controller.
    pub async fn without_controller_in(dir: &'static Path, name: &str) -> TestEnv {
        let client = client_for(&dir.join("admin.kubeconfig")).await;
        let ns = format!(
            "{}-{:06x}",
            name.replace('_', "-"),
            rand_suffix() & 0xff_ffff
        );
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("creating the test namespace");
        // Pods need the namespace's default ServiceAccount (the ServiceAccount admission).
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &ns);
        wait_for(
            "the default ServiceAccount",
            Duration::from_secs(30),
            || async { sa.get_opt("default").await.ok().flatten() },
        )
        .await;
        TestEnv {
            client,
            ns,
            controller: None,
            cluster: dir,
            managed_by: MANAGED_BY,
        }
    }

    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn controller(&self) -> &Controller {
        self.controller
            .as_ref()
            .expect("this test runs a controller")
    }

    /// A pod's story for a failure message: who wrote which of its metadata when (its
    /// managedFields), its owners, labels and finalizers now, and the controller's log
    /// lines that name it.
    pub async fn pod_story(&self, name: &str) -> String {
        let mut story = String::new();
        match self.pods().get_opt(name).await {
            Ok(Some(pod)) => {
                let meta = &pod.metadata;
                story.push_str(&format!(
                    "pod {name} at {:?}: owners {:?}\n  labels {:?}\n  finalizers {:?}\n",
                    meta.resource_version, meta.owner_references, meta.labels, meta.finalizers
                ));
                for entry in meta.managed_fields.iter().flatten() {
                    story.push_str(&format!(
                        "  {} {} {} at {:?}: {}\n",
                        entry.manager.as_deref().unwrap_or("?"),
                        entry.operation.as_deref().unwrap_or("?"),
                        entry.subresource.as_deref().unwrap_or(""),
                        entry.time.as_ref().map(|t| t.0.to_string()),
                        entry
                            .fields_v1
                            .as_ref()
                            .map(|f| f.0.to_string())
                            .unwrap_or_default()
                    ));
                }
            }
            Ok(None) => story.push_str(&format!("pod {name} is gone\n")),
            Err(e) => story.push_str(&format!("pod {name} could not be read: {e}\n")),
        }
        if let Some(controller) = &self.controller {
            story.push_str("controller log lines naming it:\n");
            for line in controller.log_text().lines().filter(|l| l.contains(name)) {
                story.push_str(line);
                story.push('\n');
            }
        }
        story
    }

    pub async fn create_job(&self, job: &Job) -> Job {
        self.jobs()
            .create(&PostParams::default(), job)
            .await
            .expect("creating a Job")
    }

    /// Deletes the Job with background propagation and waits until its pods are gone
    /// (the garbage collector deletes them; their tracking finalizers must not hold them).
    pub async fn delete_job_and_wait_for_its_pods(&self, name: &str) {
        self.jobs()
            .delete(
                name,
                &kube::api::DeleteParams {
                    propagation_policy: Some(kube::api::PropagationPolicy::Background),
                    ..Default::default()
                },
            )
            .await
            .expect("deleting the Job");
        wait_for(
            &format!("the pods of {name} to be gone"),
            Duration::from_secs(60),
            || async { self.pods_of(name).await.is_empty().then_some(()) },
        )
        .await;
    }

    pub async fn job(&self, name: &str) -> Job {
        self.jobs().get(name).await.expect("reading a Job")
    }

    pub async fn status(&self, name: &str) -> JobStatus {
        self.job(name).await.status.unwrap_or_default()
    }

    /// The Job's pods (by its job-name label, or for a manualSelector Job, whose pods lack
    /// that label, by their controller), oldest first, then by index and name. Read
    /// leniently: a pod may hold a time past what k8s-openapi's `Time` holds.
    pub async fn pods_of(&self, job: &str) -> Vec<Pod> {
        let pods: Api<Lenient<Pod>> = Api::namespaced(self.client.clone(), &self.ns);
        let mut pods: Vec<Pod> = pods
            .list(&ListParams::default())
            .await
            .expect("listing pods")
            .items
            .into_iter()
            .map(|p| p.0)
            .filter(|p| {
                p.labels()
                    .get("batch.kubernetes.io/job-name")
                    .map(String::as_str)
                    == Some(job)
                    || p.owner_references()
                        .iter()
                        .any(|o| o.controller == Some(true) && o.kind == "Job" && o.name == job)
            })
            .collect();
        pods.sort_by_key(|p| {
            (
                index_of(p).unwrap_or(u32::MAX),
                p.metadata.creation_timestamp.clone().map(|t| t.0),
                p.name_any(),
            )
        });
        pods
    }

    /// Pods of the Job that are neither finished nor being deleted.
    pub async fn active_pods(&self, job: &str) -> Vec<Pod> {
        self.pods_of(job)
            .await
            .into_iter()
            .filter(is_active)
            .collect()
    }

    /// Creates a driven Job of ours with room for a few failures (backoffLimit 4) and
    /// returns its first pod once it runs.
    pub async fn first_pod_of_a_job_that_may_fail(&self, name: &str) -> Pod {
        let mut job = driven_job(name, Some(MANAGED_BY));
        job.spec.as_mut().unwrap().backoff_limit = Some(4);
        self.create_job(&job).await;
        self.wait_active(name, 1).await.remove(0)
    }

    /// Waits until the Job has exactly `n` active pods and returns them.
    pub async fn wait_active(&self, job: &str, n: usize) -> Vec<Pod> {
        wait_for(
            &format!("{n} active pods of {job}"),
            Duration::from_secs(30),
            || async {
                let pods = self.active_pods(job).await;
                (pods.len() == n).then_some(pods)
            },
        )
        .await
    }

    /// Waits until `check` holds for the Job's status and returns it.
    pub async fn wait_status(
        &self,
        job: &str,
        what: &str,
        check: impl Fn(&JobStatus) -> bool,
    ) -> JobStatus {
        wait_for(
            &format!("{job}: {what}"),
            Duration::from_secs(60),
            || async {
                let status = self.status(job).await;
                check(&status).then_some(status)
            },
        )
        .await
    }

    pub async fn wait_condition(&self, job: &str, type_: &str) -> JobStatus {
        self.wait_status(job, &format!("condition {type_}"), |s| {
            has_condition(s, type_)
        })
        .await
    }

    // ---- the pod driver ---------------------------------------------------------------

    /// A pod the controller deleted meanwhile (its Job finished) has nothing left to
    /// report, as with a kubelet; any other error fails the test.
    async fn patch_pod_status(&self, pod: &Pod, status: serde_json::Value) {
        let result = self
            .pods()
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await;
        match result {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                eprintln!("pod {} is gone; nothing to report", pod.name_any());
            }
            Err(e) => panic!("patching the status of pod {}: {e}", pod.name_any()),
        }
    }

    /// Merge-patches the status of this namespace's `kind` object (`"pods"` or `"jobs"`)
    /// `name` with raw JSON and reads the answer as JSON, not as the typed object: for
    /// values the apiserver holds and k8s-openapi's types do not (a time on the last day
    /// of year 9999).
    pub async fn merge_patch_status_raw(&self, kind: &str, name: &str, status: serde_json::Value) {
        let group = if kind == "jobs" {
            "apis/batch/v1"
        } else {
            "api/v1"
        };
        let url = format!("/{group}/namespaces/{}/{kind}/{name}/status", self.ns);
        let request = http::Request::patch(url)
            .header("Content-Type", "application/merge-patch+json")
            .body(serde_json::to_vec(&json!({ "status": status })).expect("status json"))
            .expect("status patch request");
        let _: serde_json::Value = self
            .client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("patching the status of {kind}/{name}: {e}"));
    }

    /// Fails `pod` with its container's finishedAt (and the Ready=False transition, both
    /// written with the node's clock) at `finished_at`, sent raw: a time past
    /// 9999-12-30T22:00Z is valid to the apiserver but not to the typed client.
    pub async fn fail_finished_at(&self, pod: &Pod, finished_at: &str) {
        let status = json!({
            "phase": "Failed",
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted",
                            "lastTransitionTime": finished_at}],
            "containerStatuses": [{
                "name": "main", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error",
                                         "startedAt": finished_at, "finishedAt": finished_at}},
            }],
        });
        self.merge_patch_status_raw("pods", &pod.name_any(), status)
            .await;
    }

    /// Running and Ready.
    pub async fn set_ready(&self, pod: &Pod) {
        let now = Timestamp::now().to_string();
        self.patch_pod_status(
            pod,
            json!({
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                "containerStatuses": container_statuses(pod, json!({"running": {"startedAt": now}}), 0),
            }),
        )
        .await;
    }

    /// Running, not Ready.
    pub async fn set_running(&self, pod: &Pod) {
        let now = Timestamp::now().to_string();
        self.patch_pod_status(
            pod,
            json!({
                "phase": "Running",
                "containerStatuses": container_statuses(pod, json!({"running": {"startedAt": now}}), 0),
            }),
        )
        .await;
    }

    pub async fn succeed(&self, pod: &Pod) {
        self.finish(pod, "Succeeded", 0, &[]).await;
    }

    pub async fn fail(&self, pod: &Pod, exit_code: i32) {
        self.finish(pod, "Failed", exit_code, &[]).await;
    }

    /// Failed with extra pod conditions, e.g. `("DisruptionTarget", "EvictionByEvictionAPI")`.
    pub async fn fail_with_conditions(
        &self,
        pod: &Pod,
        exit_code: i32,
        conditions: &[(&str, &str)],
    ) {
        self.finish(pod, "Failed", exit_code, conditions).await;
    }

    async fn finish(&self, pod: &Pod, phase: &str, exit_code: i32, conditions: &[(&str, &str)]) {
        let now = Timestamp::now().to_string();
        let mut conds: Vec<serde_json::Value> = conditions
            .iter()
            .map(|(t, reason)| json!({"type": t, "status": "True", "reason": reason, "lastTransitionTime": now}))
            .collect();
        conds.push(json!({"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}));
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        self.patch_pod_status(
            pod,
            json!({
                "phase": phase,
                "conditions": conds,
                "containerStatuses": container_statuses(pod, json!({"terminated": {
                    "exitCode": exit_code, "reason": reason, "startedAt": now, "finishedAt": now}}), 0),
            }),
        )
        .await;
    }

    /// Active pods with `restarts` container restarts (restartPolicy OnFailure).
    ///
    /// The pod is also Ready (its restarted containers run again), so a status showing it
    /// ready proves the controller has planned from this pod state.
    pub async fn set_restarts(&self, pod: &Pod, restarts: i32) {
        let now = Timestamp::now().to_string();
        self.patch_pod_status(
            pod,
            json!({
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                "containerStatuses": container_statuses(pod, json!({"running": {"startedAt": now}}), restarts),
            }),
        )
        .await;
    }

    /// Asserts that nothing the controller wrote to a Job status was rejected.
    pub async fn assert_no_rejected_status(&self) {
        if let Some(c) = &self.controller {
            let rejected = c
                .counter(
                    "jobkeeper_kube_api_requests_total",
                    &[("resource", "jobs/status"), ("code", "422")],
                )
                .await;
            assert_eq!(
                rejected,
                0.0,
                "the apiserver rejected status writes; log: {}",
                c.log.display()
            );
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.kill();
        }
        if std::thread::panicking() {
            eprintln!("test namespace {} kept for inspection", self.ns);
            return;
        }
        // Best effort, in the background: the namespace controller cleans up.
        Command::new(cluster_bin("kubectl"))
            .arg("--kubeconfig")
            .arg(self.cluster.join("admin.kubeconfig"))
            .args(["delete", "namespace", &self.ns, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// `kubectl` against the control plane in `dir`, run from the repository root.
pub fn kubectl_in(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(cluster_bin("kubectl"))
        .arg("--kubeconfig")
        .arg(dir.join("admin.kubeconfig"))
        .args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("kubectl stdin")
            .write_all(input)
            .expect("writing to kubectl");
    }
    child.wait_with_output().expect("waiting for kubectl")
}

/// A command's stdout, or a panic naming `what` with its output.
pub fn expect_ok(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A control-plane binary from the cache (build.sh prints its folder).
pub fn cluster_bin(name: &str) -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(repo_root().join("tests/cluster/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("tests/cluster/build.sh");
        let line = BufReader::new(&out.stdout[..])
            .lines()
            .map_while(Result::ok)
            .last()
            .expect("build.sh prints its bin folder");
        PathBuf::from(line)
    })
    .join(name)
}

fn container_statuses(pod: &Pod, state: serde_json::Value, restarts: i32) -> serde_json::Value {
    let ready = state.get("running").is_some();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    json!(
        containers
            .iter()
            .map(|c| json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": ready,
                "restartCount": restarts, "state": state,
            }))
            .collect::<Vec<_>>()
    )
}

pub fn index_of(pod: &Pod) -> Option<u32> {
    pod.annotations()
        .get("batch.kubernetes.io/job-completion-index")
        .and_then(|i| i.parse().ok())
}

pub fn is_active(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    pod.metadata.deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
}

/// The reason of the Job's condition `type_`, if it is True.
pub fn condition_reason(status: &JobStatus, type_: &str) -> Option<String> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")?
        .reason
        .clone()
}

/// An API type from its JSON, for the parts of a spec that read best as JSON.
pub fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a valid API object")
}

pub fn has_condition(status: &JobStatus, type_: &str) -> bool {
    status
        .conditions
        .as_ref()
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// The Job has condition `type_` and no terminated pod is left uncounted: its final status.
pub fn finished_and_counted(status: &JobStatus, type_: &str) -> bool {
    has_condition(status, type_)
        && status.uncounted_terminated_pods.as_ref().is_none_or(|u| {
            u.succeeded.as_ref().is_none_or(Vec::is_empty)
                && u.failed.as_ref().is_none_or(Vec::is_empty)
        })
}

/// A Job named `name` whose pods carry the label `app: <app>` and run `pod`.
pub fn job_with_pods(name: &str, managed_by: Option<&str>, app: &str, pod: PodSpec) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            managed_by: managed_by.map(Into::into),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([("app".into(), app.into())])),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Job whose pods the test drives (never scheduled, so no kwok or scheduler touches them).
pub fn driven_job(name: &str, managed_by: Option<&str>) -> Job {
    let pod = PodSpec {
        scheduler_name: Some(DRIVER_SCHEDULER.into()),
        restart_policy: Some("Never".into()),
        termination_grace_period_seconds: Some(0),
        containers: vec![Container {
            name: "main".into(),
            image: Some("registry.k8s.io/e2e-test-images/agnhost:2.53".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    job_with_pods(name, managed_by, "test", pod)
}

/// A Job whose pods kwok runs to completion on the fake nodes.
pub fn kwok_job(name: &str, managed_by: Option<&str>) -> Job {
    let mut job = driven_job(name, managed_by);
    let spec = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.scheduler_name = None;
    spec.tolerations = None;
    job
}

/// A kwok-run Job of ours: `completions` pods, `parallelism` at a time, each running
/// `run_ms` before it succeeds.
pub fn kwok_job_sized(name: &str, completions: i32, parallelism: i32, run_ms: u32) -> Job {
    let mut job = kwok_job(name, Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    spec.completions = Some(completions);
    spec.parallelism = Some(parallelism);
    spec.template.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([(
        "jobkeeper.dev/run-ms".to_string(),
        run_ms.to_string(),
    )]));
    job
}

/// The parts of a status that must match between two controllers given the same pod
/// outcomes: everything but timestamps.
pub fn comparable(status: &JobStatus) -> serde_json::Value {
    let conditions: Vec<serde_json::Value> = status
        .conditions
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|c| json!({"type": c.type_, "status": c.status, "reason": c.reason, "message": c.message}))
        .collect();
    let uncounted = status.uncounted_terminated_pods.as_ref().map(|u| {
        json!({
            "succeeded": u.succeeded.as_ref().map(|v| v.len()).unwrap_or(0),
            "failed": u.failed.as_ref().map(|v| v.len()).unwrap_or(0),
        })
    });
    json!({
        "active": status.active.unwrap_or(0),
        "ready": status.ready,
        "terminating": status.terminating,
        "succeeded": status.succeeded.unwrap_or(0),
        "failed": status.failed.unwrap_or(0),
        "completedIndexes": status.completed_indexes.clone().filter(|s| !s.is_empty()),
        "failedIndexes": status.failed_indexes.clone(),
        "conditions": conditions,
        "hasStartTime": status.start_time.is_some(),
        "hasCompletionTime": status.completion_time.is_some(),
        "uncounted": uncounted.filter(|u| u != &json!({"succeeded": 0, "failed": 0})),
    })
}

pub fn condition_time(status: &JobStatus, type_: &str) -> Option<Time> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?
        .last_transition_time
        .clone()
}

pub fn pod_condition(type_: &str, status: &str) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        ..Default::default()
    }
}
