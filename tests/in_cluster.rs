//! The in-cluster path, end to end: jobkeeper's image loaded into the real node and installed
//! with `kubectl apply -k deploy/` exactly as the README gives it, on the real-node control
//! plane (`support::real`), where every pod runs in a real container.
//!
//! The steps share the one cluster-wide install in `jobkeeper-system`, so they run in order
//! in one test: the replicas come up Ready under `restricted` Pod Security as UID 65532 with
//! a read-only root, one holds the Lease; the sample Jobs end as under the built-in job
//! controller; the leader logs its decisions as JSON; the Lease changes hands when the leader
//! pod is deleted and when its process is SIGKILLed, and across a rollout restart, with exact
//! counts and never two status writers at once (from the apiserver's audit log); `/metrics`
//! answers through the Service's ClusterIP.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::real::*;
use support::*;

const SYSTEM_NS: &str = "jobkeeper-system";
const SELECTOR: &str = "app.kubernetes.io/name=jobkeeper,app.kubernetes.io/component=controller";
const CONTROLLER_USER: &str = "system:serviceaccount:jobkeeper-system:jobkeeper";
const NONROOT_UID: &str = "65532";

fn kubectl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    kubectl_in(real_cluster_dir(), args, stdin)
}

fn run(args: &[&str]) -> String {
    expect_ok(&kubectl(args, None), &format!("kubectl {}", args.join(" ")))
}

fn step(name: &str, started: Instant) {
    eprintln!("[{:>6.1?}] {name}", started.elapsed());
}

#[tokio::test]
async fn jobkeeper_installed_from_deploy_runs_the_samples_and_survives_its_leader() {
    let started = Instant::now();
    let client = real_admin_client().await;
    step("loading the image", started);
    load_image();
    let _install = Install::apply();

    step("1. replicas Ready, restricted, one leader", started);
    let leader = replicas_come_up_restricted_with_one_leader(&client).await;

    step(
        "2. the sample Jobs, against the built-in controller",
        started,
    );
    let examples = samples_end_as_under_the_builtin_controller().await;

    step("3. the leader's JSON decision lines", started);
    leader_logs_json_decisions(&client, &leader, &examples.ns).await;

    step("4a. failover: leader pod deleted", started);
    failover(&client, Handover::DeletePod).await;
    step("4b. failover: leader process SIGKILLed", started);
    failover(&client, Handover::KillProcess).await;

    step("5. rollout restart while a Job runs", started);
    rollout_restart_keeps_exact_counts(&client).await;

    step("6. /metrics through the Service's ClusterIP", started);
    metrics_reachable_through_the_service(&client).await;
    step("done", started);
}

// ---- install -------------------------------------------------------------------------------

/// Imports `make image`'s archive into the real node as docker.io/library/jobkeeper:dev.
/// tests/cluster/jobkeeper-image.sh packs the archive anew on every run, so `make
/// integration` builds it once before the tests instead of this test building it.
fn load_image() {
    let archive = shared::image_archive();
    assert!(
        archive.exists(),
        "no image archive {}: run `make image` (make integration does) or set JOBKEEPER_IMAGE_ARCHIVE",
        archive.display()
    );
    let out = Command::new(repo_root().join("tests/cluster/load-image.sh"))
        .arg(real_cluster_dir())
        .arg(&archive)
        .arg("jobkeeper:dev")
        .output()
        .expect("running tests/cluster/load-image.sh");
    expect_ok(&out, "tests/cluster/load-image.sh");
}

/// The install; dropping it (also when a step panics) uninstalls.
struct Install;

impl Install {
    fn apply() -> Install {
        let install = Install;
        run(&["apply", "-k", "deploy/"]);
        install
    }
}

impl Drop for Install {
    /// The README's uninstall is `kubectl delete -k deploy/`. On this shared cluster that
    /// would also delete what tests/cluster/up.sh set up before any test ran and what every
    /// real-node test's out-of-cluster controller relies on (the `jobkeeper-system`
    /// namespace and deploy/base/rbac.yaml: the controller identity's ClusterRoleBinding),
    /// failing other test binaries running at the same time. So this deletes what the
    /// install added on top of that, and the Lease, leaving the cluster as up.sh left it.
    fn drop(&mut self) {
        let deleted = kubectl(
            &[
                "delete",
                "-n",
                SYSTEM_NS,
                "deployment/jobkeeper",
                "service/jobkeeper-metrics",
                "poddisruptionbudget/jobkeeper",
                "lease/jobkeeper",
                "--ignore-not-found",
                "--wait",
            ],
            None,
        );
        let gone = kubectl(
            &[
                "wait",
                "-n",
                SYSTEM_NS,
                "--for=delete",
                "pod",
                "-l",
                SELECTOR,
                "--timeout=60s",
            ],
            None,
        );
        for (what, out) in [("uninstalling", deleted), ("waiting for the pods", gone)] {
            if !out.status.success() {
                eprintln!("{what}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

// ---- step 1: replicas, security, leader ----------------------------------------------------

fn is_running_and_ready(pod: &Pod) -> bool {
    let status = pod.status.clone().unwrap_or_default();
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Waits until exactly two jobkeeper pods are Running and Ready (and none other is left).
async fn ready_replicas(client: &Client, timeout: Duration) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    wait_for(
        "two jobkeeper pods Running and Ready, and no other",
        timeout,
        || async {
            let all = pods
                .list(&ListParams::default().labels(SELECTOR))
                .await
                .ok()?
                .items;
            (all.len() == 2 && all.iter().all(is_running_and_ready)).then_some(all)
        },
    )
    .await
}

/// The Lease's holder and duration.
async fn lease(client: &Client) -> Option<(String, u64)> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NS);
    let spec = leases.get_opt("jobkeeper").await.ok()??.spec?;
    Some((
        spec.holder_identity.filter(|h| !h.is_empty())?,
        spec.lease_duration_seconds? as u64,
    ))
}

/// The pod whose process holds the Lease: holder identities are `<pod name>_<random>`,
/// one per process.
fn pod_of(holder: &str) -> &str {
    holder.rsplit_once('_').map_or(holder, |(pod, _)| pod)
}

/// The holder identity and lease duration, once one of `pods` holds the Lease.
async fn lease_holder_among(client: &Client, pods: &[Pod]) -> (String, u64) {
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    wait_for(
        &format!("the Lease jobkeeper-system/jobkeeper held by one of {names:?}"),
        Duration::from_secs(30),
        || async {
            lease(client)
                .await
                .filter(|(holder, _)| names.iter().any(|n| n == pod_of(holder)))
        },
    )
    .await
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an IP")
}

/// The pod's `jobkeeper_leader` gauge, read from its metrics port (pod IPs are routed on
/// this host through the node's bridge).
async fn leader_gauge(pod: &Pod) -> f64 {
    let text = http_get_at(&pod_ip(pod), 8080, "/metrics")
        .await
        .unwrap_or_default();
    sum_metric(&text, "jobkeeper_leader", &[])
}

fn container_id(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref()?.first()?.container_id.clone())
        .unwrap_or_else(|| panic!("{} has no running container", pod.name_any()))
}

/// The live pod spec and the container's process on this host both say UID 65532 and a
/// read-only root filesystem.
fn assert_nonroot_read_only(pod: &Pod) {
    let name = pod.name_any();
    let spec = pod.spec.as_ref().expect("pod spec");
    let security = spec.containers[0]
        .security_context
        .clone()
        .unwrap_or_default();
    assert_eq!(
        security.run_as_user,
        Some(65532),
        "{name}: the live container spec runs as UID 65532"
    );
    assert_eq!(
        security.read_only_root_filesystem,
        Some(true),
        "{name}: the live container spec has readOnlyRootFilesystem"
    );
    let pid = container_host_pid(&container_id(pod));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let uids: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("a Uid line")
        .split_whitespace()
        .collect();
    assert_eq!(
        uids, [NONROOT_UID; 4],
        "{name}: the container's process (host PID {pid}) runs with real, effective, saved and fs UID 65532"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root_options = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .rfind(|f| f.get(4) == Some(&"/"))
        .map(|f| f[5].to_string())
        .expect("the container's root mount");
    assert!(
        root_options.split(',').any(|o| o == "ro"),
        "{name}: the process's root filesystem is mounted read-only, not {root_options}"
    );
}

/// Step 1. Returns the leader's pod name.
async fn replicas_come_up_restricted_with_one_leader(client: &Client) -> String {
    let applied = Instant::now();
    let pods = ready_replicas(client, Duration::from_secs(60)).await;
    eprintln!(
        "both replicas Ready {:?} after the apply",
        applied.elapsed()
    );
    let ns = run(&["get", "namespace", SYSTEM_NS, "-o", "json"]);
    let ns: Value = serde_json::from_str(&ns).unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
        "jobkeeper-system enforces the restricted Pod Security level"
    );
    for pod in &pods {
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("real-node-0"),
            "{} runs on the real node",
            pod.name_any()
        );
        assert_nonroot_read_only(pod);
    }
    let (holder, _) = lease_holder_among(client, &pods).await;
    let holder = pod_of(&holder).to_string();
    let mut gauges = Vec::new();
    for pod in &pods {
        gauges.push((pod.name_any(), leader_gauge(pod).await));
    }
    let leaders: Vec<&str> = gauges
        .iter()
        .filter(|(_, g)| *g == 1.0)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        leaders,
        [holder.as_str()],
        "exactly one replica reports jobkeeper_leader 1, the Lease holder: {gauges:?}"
    );
    holder
}

// ---- step 2: the samples against the built-in controller -----------------------------------

/// deploy/examples/ as JSON objects, `spec.managedBy` removed: the built-in controller's.
fn examples_for_the_builtin_controller() -> String {
    let json = run(&[
        "create",
        "--dry-run=client",
        "-o",
        "json",
        "-f",
        "deploy/examples/",
    ]);
    serde_json::Deserializer::from_str(&json)
        .into_iter::<Value>()
        .map(|v| {
            let mut job = v.expect("kubectl JSON");
            job["spec"].as_object_mut().unwrap().remove("managedBy");
            // kubectl filled in its current namespace; the apply names the twin's.
            job["metadata"].as_object_mut().unwrap().remove("namespace");
            job.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn final_status(env: &TestEnv, job: &str, condition: &str) -> JobStatus {
    env.wait_status(job, &format!("{condition} with nothing uncounted"), |s| {
        finished_and_counted(s, condition)
    })
    .await
}

/// Every pod of the Job ran in a real container on the real node and exited with `code`.
async fn assert_real_containers(env: &TestEnv, job: &str, code: i32) {
    let pods = env.pods_of(job).await;
    assert!(!pods.is_empty(), "{job} has pods");
    for pod in &pods {
        let name = pod.name_any();
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("real-node-0"),
            "{job}: {name} ran on the real node"
        );
        let status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone());
        let container = status
            .as_ref()
            .and_then(|c| c.first())
            .unwrap_or_else(|| panic!("{job}: {name} has no container status"));
        assert!(
            container
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("containerd://")),
            "{job}: {name} ran in a containerd container: {container:?}"
        );
        let exit = container
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| t.exit_code);
        assert_eq!(exit, Some(code), "{job}: {name}'s container exit code");
    }
}

/// Step 2. Returns the namespace of jobkeeper's run (kept until the end of the test).
async fn samples_end_as_under_the_builtin_controller() -> TestEnv {
    let dir = real_cluster_dir();
    let ours = TestEnv::without_controller_in(dir, "examples").await;
    let reference = TestEnv::without_controller_in(dir, "examples-ref").await;
    run(&["apply", "-n", &ours.ns, "-f", "deploy/examples/"]);
    let builtin = examples_for_the_builtin_controller();
    expect_ok(
        &kubectl(
            &["apply", "-n", &reference.ns, "-f", "-"],
            Some(builtin.as_bytes()),
        ),
        "applying deploy/examples without managedBy",
    );
    for (job, condition, code) in [
        ("hello", "Complete", 0),
        ("indexed", "Complete", 0),
        ("failing", "Failed", 1),
    ] {
        let mine = final_status(&ours, job, condition).await;
        let theirs = final_status(&reference, job, condition).await;
        assert_eq!(
            comparable(&mine),
            comparable(&theirs),
            "{job}: jobkeeper's final status (left) differs from the built-in controller's (right)"
        );
        assert_real_containers(&ours, job, code).await;
    }
    assert_eq!(ours.status("hello").await.succeeded, Some(3));
    assert_eq!(
        ours.status("indexed").await.completed_indexes.as_deref(),
        Some("0-4")
    );
    let failing = ours.status("failing").await;
    let reason = condition_reason(&failing, "Failed");
    assert_eq!(
        reason.as_deref(),
        Some("BackoffLimitExceeded"),
        "failing fails by its backoff limit"
    );
    ours
}

// ---- step 3: decision logs -----------------------------------------------------------------

/// Step 3. `kubectl logs deploy/jobkeeper` would pick either replica, and only the leader
/// syncs, so this reads the logs of the pod that held the Lease throughout step 2.
async fn leader_logs_json_decisions(client: &Client, leader: &str, ns: &str) {
    let (holder, _) = lease(client).await.expect("the Lease");
    assert_eq!(
        pod_of(&holder),
        leader,
        "the Lease stayed with {leader} while the samples ran"
    );
    let logs = run(&["-n", SYSTEM_NS, "logs", leader]);
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{leader} logged a line that is not JSON ({e}): {l}"))
        })
        .collect();
    for job in ["hello", "indexed", "failing"] {
        let job_ref = format!("{ns}/{job}");
        let decisions: Vec<&Value> = lines
            .iter()
            .filter(|l| l["job"] == job_ref.as_str() && l["level"] == "INFO")
            .filter(|l| l["message"].as_str().is_some_and(|m| !m.is_empty()))
            .collect();
        assert!(
            !decisions.is_empty(),
            "{leader}'s logs have no JSON decision line with job={job_ref}:\n{logs}"
        );
        eprintln!(
            "{job_ref}: {} decision lines, e.g. {}",
            decisions.len(),
            decisions[0]
        );
    }
}

// ---- steps 4 and 5: handovers --------------------------------------------------------------

/// Six 2-second pods, two at a time, in real containers.
fn sleeper(name: &str) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "managedBy": MANAGED_BY,
            "completions": 6,
            "parallelism": 2,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "sleep", "image": "busybox:1.35", "command": ["sleep", "2"]}],
            }},
        },
    }))
    .expect("a Job")
}

/// Starts the sleeper Job in a fresh namespace and waits until its first pods succeeded.
async fn running_sleeper(name: &str) -> TestEnv {
    let env = TestEnv::without_controller_in(real_cluster_dir(), name).await;
    env.create_job(&sleeper("work")).await;
    env.wait_status("work", "2 succeeded", |s| s.succeeded >= Some(2))
        .await;
    env
}

/// The Job completed with exact counts and no pod created twice.
async fn assert_exact_counts(env: &TestEnv) {
    let status = final_status(env, "work", "Complete").await;
    assert_eq!(
        (status.succeeded, status.failed.unwrap_or(0)),
        (Some(6), 0),
        "the Job across the handover: succeeded 6, failed 0"
    );
    assert_eq!(
        env.pods_of("work").await.len(),
        6,
        "no pod created twice across the handover"
    );
}

/// One status writer's span in the audit log.
#[derive(Debug)]
struct Writer {
    ip: String,
    first: Timestamp,
    last: Timestamp,
    writes: usize,
}

fn audit_time(event: &Value, field: &str) -> Timestamp {
    event[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("audit event without {field}: {event}"))
}

/// jobkeeper's `jobs/status` writes in `ns`, per source IP (each replica pod has its own),
/// ordered by their first write.
fn status_writers(ns: &str) -> Vec<Writer> {
    let mut writers: Vec<Writer> = Vec::new();
    for event in audit_events_in(ns) {
        let writes_status = event["user"]["username"] == CONTROLLER_USER
            && event["stage"] == "ResponseComplete"
            && event["objectRef"]["resource"] == "jobs"
            && event["objectRef"]["subresource"] == "status"
            && (event["verb"] == "update" || event["verb"] == "patch");
        if !writes_status {
            continue;
        }
        let ip = event["sourceIPs"][0].as_str().unwrap_or("?").to_string();
        let (received, done) = (
            audit_time(&event, "requestReceivedTimestamp"),
            audit_time(&event, "stageTimestamp"),
        );
        match writers.iter_mut().find(|w| w.ip == ip) {
            Some(w) => {
                w.first = w.first.min(received);
                w.last = w.last.max(done);
                w.writes += 1;
            }
            None => writers.push(Writer {
                ip,
                first: received,
                last: done,
                writes: 1,
            }),
        }
    }
    writers.sort_by_key(|w| w.first);
    writers
}

/// From the audit log: the replicas' status writes in `ns` never overlap in time. Returns
/// the writers' IPs in order. Waits until the log holds the write that completed the Job.
async fn assert_one_writer_at_a_time(env: &TestEnv) -> Vec<String> {
    let completed = env
        .status("work")
        .await
        .completion_time
        .expect("a completed Job has a completionTime")
        .0;
    let writers = wait_for(
        "the audit log to hold the write that completed the Job",
        Duration::from_secs(30),
        || async {
            let writers = status_writers(&env.ns);
            writers
                .iter()
                .any(|w| w.last >= completed)
                .then_some(writers)
        },
    )
    .await;
    for pair in writers.windows(2) {
        assert!(
            pair[0].last < pair[1].first,
            "two replicas wrote Job statuses at the same time: {:?} and {:?} overlap (all: {writers:#?})",
            pair[0],
            pair[1]
        );
    }
    eprintln!("status writers in {}: {writers:?}", env.ns);
    writers.into_iter().map(|w| w.ip).collect()
}

#[derive(Debug, Clone, Copy)]
enum Handover {
    DeletePod,
    KillProcess,
}

fn take_down(handover: Handover, leader: &Pod) {
    match handover {
        Handover::DeletePod => {
            run(&[
                "delete",
                "pod",
                "-n",
                SYSTEM_NS,
                &leader.name_any(),
                "--wait=false",
            ]);
        }
        Handover::KillProcess => {
            let pid = container_host_pid(&container_id(leader));
            let status = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .expect("running kill");
            assert!(status.success(), "kill -9 {pid}");
        }
    }
}

/// Who took the Lease after the leader's process went.
#[derive(Debug, PartialEq)]
enum Successor {
    /// The other replica, standing by before the leader went.
    Standby,
    /// A new process in the leader's own pod (its container restarted).
    RestartedContainer,
    /// A pod that did not exist before: the ReplicaSet's replacement of a deleted leader.
    Replacement(String),
}

/// The Lease's holder once it is neither the old process's identity nor empty.
async fn new_holder(client: &Client, old: &str) -> Option<String> {
    let (holder, _) = lease(client).await?;
    (holder != old).then_some(holder)
}

fn successor(holder: &str, leader: &Pod, standby: &Pod) -> Successor {
    let pod = pod_of(holder);
    if pod == standby.name_any() {
        Successor::Standby
    } else if pod == leader.name_any() {
        Successor::RestartedContainer
    } else {
        Successor::Replacement(pod.to_string())
    }
}

/// What an operator would look at when no new leader shows up: the pods, the Lease, every
/// replica's log (the previous container's too) and the namespace's events.
fn leader_diagnostics() -> String {
    let mut out = String::new();
    let mut section = |title: &str, args: &[&str]| {
        let o = kubectl(args, None);
        out.push_str(&format!(
            "---- {title}\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    };
    section("pods", &["get", "pods", "-n", SYSTEM_NS, "-o", "wide"]);
    section(
        "lease",
        &["get", "lease", "-n", SYSTEM_NS, "jobkeeper", "-o", "yaml"],
    );
    section(
        "events",
        &["get", "events", "-n", SYSTEM_NS, "--sort-by=.lastTimestamp"],
    );
    let names = kubectl(
        &["get", "pods", "-n", SYSTEM_NS, "-l", SELECTOR, "-o", "name"],
        None,
    );
    for pod in String::from_utf8_lossy(&names.stdout).split_whitespace() {
        for previous in ["--previous=false", "--previous=true"] {
            section(
                &format!("logs {pod} {previous}"),
                &["logs", "-n", SYSTEM_NS, pod, previous, "--tail=40"],
            );
        }
    }
    out
}

/// Step 4: while a Job runs, the leader goes; within the lease duration + 5 s a new
/// process holds the Lease, the Job completes with exact counts, and the audit log shows
/// one status writer at a time.
///
/// A deleted leader pod releases the Lease on SIGTERM and a waiting replica takes it at its
/// next look: the standby, or, when the ReplicaSet's replacement started and looked first,
/// the replacement (both are right; what matters is that no expiry was waited for). A
/// SIGKILLed leader's container is restarted by the kubelet within about a second, as a new
/// process with a new identity (`<pod>_<random>`): it finds the Lease held by its previous
/// self and leaves it to the standby, which takes it once it expires.
async fn failover(client: &Client, handover: Handover) {
    let pods = ready_replicas(client, Duration::from_secs(90)).await;
    let (holder, duration) = lease_holder_among(client, &pods).await;
    let (leader, standby): (Vec<&Pod>, Vec<&Pod>) =
        pods.iter().partition(|p| p.name_any() == pod_of(&holder));
    let (leader, standby) = (leader[0], standby[0]);
    let name = format!("failover-{handover:?}").to_lowercase();
    let env = running_sleeper(&name).await;
    take_down(handover, leader);
    let gone = Instant::now();
    let limit = Duration::from_secs(duration + 5);
    let polled = tokio::time::timeout(limit, async {
        loop {
            if let Some(holder) = new_holder(client, &holder).await {
                return holder;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let Ok(new) = polled else {
        panic!(
            "after {handover:?} of {holder}, no new process held the Lease within {limit:?}\n{}",
            leader_diagnostics()
        );
    };
    let who = successor(&new, leader, standby);
    eprintln!(
        "{handover:?}: {who:?} ({new}) holds the Lease after {:?} (lease duration {duration} s)",
        gone.elapsed()
    );
    let successor_ip = match (&who, handover) {
        (Successor::Standby, _) => pod_ip(standby),
        (Successor::Replacement(pod), Handover::DeletePod) => {
            // Its process can lead before the kubelet has reported the pod's IP.
            let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
            wait_for(
                "the replacement's pod IP",
                Duration::from_secs(30),
                || async { pods.get(pod).await.ok()?.status?.pod_ip },
            )
            .await
        }
        _ => panic!(
            "after {handover:?} the standby (or a deleted leader's replacement) leads, not {who:?}\n{}",
            leader_diagnostics()
        ),
    };
    assert_exact_counts(&env).await;
    let writers = assert_one_writer_at_a_time(&env).await;
    assert_eq!(
        writers,
        vec![pod_ip(leader), successor_ip],
        "status writers by pod IP: the old leader, then {who:?} alone"
    );
}

/// Step 5. A rollout restart replaces both replicas while the Job runs.
async fn rollout_restart_keeps_exact_counts(client: &Client) {
    ready_replicas(client, Duration::from_secs(90)).await;
    let env = running_sleeper("rollout").await;
    run(&[
        "rollout",
        "restart",
        "-n",
        SYSTEM_NS,
        "deployment/jobkeeper",
    ]);
    assert_exact_counts(&env).await;
    assert_one_writer_at_a_time(&env).await;
    run(&[
        "rollout",
        "status",
        "-n",
        SYSTEM_NS,
        "deployment/jobkeeper",
        "--timeout=120s",
    ]);
    ready_replicas(client, Duration::from_secs(60)).await;
}

// ---- step 6: metrics through the Service ---------------------------------------------------

async fn finished_pod(env: &TestEnv, name: &str) -> Pod {
    wait_for(
        &format!("pod {name} to finish"),
        Duration::from_secs(60),
        || async {
            let pod = env.pods().get(name).await.ok()?;
            let phase = pod.status.as_ref()?.phase.clone()?;
            (phase == "Succeeded" || phase == "Failed").then_some(pod)
        },
    )
    .await
}

/// The ready endpoints of the jobkeeper-metrics Service, sorted.
async fn service_endpoints(client: &Client) -> Vec<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), SYSTEM_NS);
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=jobkeeper-metrics"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut ips: Vec<String> = list
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.clone())
        .collect();
    ips.sort();
    ips
}

/// Step 6. A busybox pod in a fresh (unrestricted) namespace GETs /metrics from the
/// Service's ClusterIP with `nc` (the node's busybox has a working nc, not wget). Right
/// after step 5's rollout the Service's endpoints and kube-proxy's rules still move: the
/// test first waits for the endpoints to be the two Ready replicas, and the pod tries up to
/// 20 times, a second apart, until an answer names a jobkeeper_ metric.
async fn metrics_reachable_through_the_service(client: &Client) {
    let pods = ready_replicas(client, Duration::from_secs(60)).await;
    let mut replicas: Vec<String> = pods.iter().map(pod_ip).collect();
    replicas.sort();
    wait_for(
        "the jobkeeper-metrics endpoints to be the two Ready replicas",
        Duration::from_secs(30),
        || async { (service_endpoints(client).await == replicas).then_some(()) },
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), SYSTEM_NS);
    let ip = services
        .get("jobkeeper-metrics")
        .await
        .expect("the jobkeeper-metrics Service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    let env = TestEnv::without_controller_in(real_cluster_dir(), "metrics").await;
    let get = format!(
        "for i in $(seq 20); do printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | nc {ip} 8080 >/tmp/out; \
         echo \"attempt $i: exit $?, $(wc -c </tmp/out) bytes\"; grep -q jobkeeper_ /tmp/out && break; \
         sleep 1; done; cat /tmp/out"
    );
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "scrape"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "nc", "image": "busybox:1.35", "command": ["sh", "-c", get]}],
        },
    }))
    .unwrap();
    env.pods()
        .create(&PostParams::default(), &pod)
        .await
        .expect("creating the scrape pod");
    finished_pod(&env, "scrape").await;
    let body = run(&["logs", "-n", &env.ns, "scrape"]);
    let attempts: Vec<&str> = body.lines().filter(|l| l.starts_with("attempt ")).collect();
    eprintln!("scraping {ip}:8080 from a pod: {attempts:?}");
    assert!(
        body.contains("jobkeeper_"),
        "GET http://{ip}:8080/metrics from a pod returned no jobkeeper_ metric:\n{body}"
    );
}
