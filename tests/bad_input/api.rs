//! Cases: see tests/bad_input.rs. What the API server and the network throw at jobkeeper:
//! an apiserver it cannot reach (at start, or mid-run: `/readyz` turns false, requests
//! time out instead of hanging), a watch that expires (410 Gone) while it is cut off, and
//! RBAC that stops at one namespace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};

use crate::support::proxy::Proxy;
use crate::support::*;

/// Short timeouts, so an outage shows within seconds: requests give up after 2 s, a
/// silent watch is reconnected after 3 + 5 s, and a watch failing for 3 s is unhealthy.
const OUTAGE_FLAGS: [&str; 6] = [
    "--kube-api-timeout",
    "2s",
    "--watch-timeout",
    "3s",
    "--watch-unhealthy-after",
    "3s",
];

const UNHEALTHY_LINE: &str = "a watch cannot reach the API server";

async fn readyz(c: &Controller) -> Option<String> {
    http_get(c.health_port, "/readyz").await
}

async fn ready(c: &Controller) -> bool {
    readyz(c).await.is_some_and(|r| r.contains(" 200 "))
}

async fn healthz_ok(c: &Controller) -> bool {
    http_get(c.health_port, "/healthz")
        .await
        .is_some_and(|r| r.contains(" 200 "))
}

/// Requests that got no answer (timed out or could not connect).
async fn unanswered(c: &Controller) -> f64 {
    c.counter("jobkeeper_kube_api_requests_total", &[("code", "0")])
        .await
}

/// A driven Job of `n` pods, all run at once, each succeeded by the test.
async fn run_to_completion(env: &TestEnv, name: &str, n: i32) {
    let mut job = driven_job(name, Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(n);
    job.spec.as_mut().unwrap().completions = Some(n);
    env.create_job(&job).await;
    finish(env, name, n).await;
}

async fn finish(env: &TestEnv, name: &str, n: i32) {
    for pod in env.wait_active(name, n as usize).await {
        env.succeed(&pod).await;
    }
    let status = env.wait_condition(name, "Complete").await;
    assert_eq!((status.succeeded, status.failed), (Some(n), None));
    assert_eq!(env.pods_of(name).await.len(), n as usize);
}

/// Started while the apiserver is unreachable: the controller says so, stays up (no crash
/// loop: it retries with backoff), is not ready, and serves Jobs once the network is back.
#[tokio::test]
async fn an_unreachable_apiserver_at_start_is_waited_for() {
    let mut env = TestEnv::without_controller("api-unreachable-start").await;
    let direct = cluster_dir().join("jobkeeper.kubeconfig");
    let proxy = Proxy::start(&direct).await;
    proxy.blackhole();
    let controller =
        Controller::start_with_kubeconfig(&env.ns, &proxy.kubeconfig(&direct), &OUTAGE_FLAGS);
    wait_for(
        "the unhealthy watch line",
        Duration::from_secs(60),
        || async { controller.log_text().contains(UNHEALTHY_LINE).then_some(()) },
    )
    .await;
    assert!(healthz_ok(&controller).await, "/healthz during the outage");
    let not_ready = readyz(&controller).await.unwrap_or_default();
    assert!(not_ready.contains(" 503 "), "{not_ready}");
    // Retrying with backoff, not spinning: wait for a few more tries, then count them.
    let tries = unanswered(&controller).await;
    wait_for("more tries", Duration::from_secs(60), || async {
        (unanswered(&controller).await >= tries + 2.0).then_some(())
    })
    .await;
    let tries = unanswered(&controller).await;
    assert!(tries < 40.0, "{tries} unanswered requests: a hot loop");

    proxy.restore();
    wait_for("/readyz", Duration::from_secs(60), || async {
        ready(&controller).await.then_some(())
    })
    .await;
    env.controller = Some(controller);
    run_to_completion(&env, "after", 2).await;
    assert!(healthz_ok(env.controller()).await);
}

/// The network goes silent mid-run: `/readyz` turns false with a warning; a sync that was
/// writing when it went (the Job's active deadline passes during the outage) times out
/// instead of hanging; once the network is back the controller, never restarted, is ready
/// again, finishes the interrupted Job and a Job created during the outage, counts exact.
#[tokio::test]
async fn a_silent_network_turns_readyz_false_and_nothing_hangs() {
    silent_network(false).await;
}

/// The same, and the Job whose status writes timed out during the outage counts each of
/// its two pods once. Written while the timeouts were built, it then saw failed 4 after one
/// timed-out write and 10 after four; it passes since the executor goes on after failed pod
/// writes and the planner counts a pod in either uncounted list as recorded.
#[tokio::test]
async fn a_status_write_that_timed_out_counts_each_pod_once() {
    silent_network(true).await;
}

/// A namespace named after `name`, served by a controller that reaches the apiserver
/// through a [`Proxy`] the test can cut, once that controller is ready.
async fn controller_behind_proxy(name: &str) -> (TestEnv, Proxy) {
    let mut env = TestEnv::without_controller(name).await;
    let direct = cluster_dir().join("jobkeeper.kubeconfig");
    let proxy = Proxy::start(&direct).await;
    env.controller = Some(Controller::start_with_kubeconfig(
        &env.ns,
        &proxy.kubeconfig(&direct),
        &OUTAGE_FLAGS,
    ));
    wait_for("/readyz", Duration::from_secs(30), || async {
        ready(env.controller()).await.then_some(())
    })
    .await;
    (env, proxy)
}

async fn silent_network(exact_counts: bool) {
    let (env, proxy) = controller_behind_proxy("api-silent").await;
    let controller = env.controller();
    let pid = controller.pid();

    let mut deadline = driven_job("deadline", Some(MANAGED_BY));
    deadline.spec.as_mut().unwrap().parallelism = Some(2);
    deadline.spec.as_mut().unwrap().active_deadline_seconds = Some(6);
    env.create_job(&deadline).await;
    env.wait_active("deadline", 2).await;

    proxy.blackhole();
    env.create_job(&{
        let mut job = driven_job("meanwhile", Some(MANAGED_BY));
        job.spec.as_mut().unwrap().parallelism = Some(2);
        job.spec.as_mut().unwrap().completions = Some(2);
        job
    })
    .await;
    // The deadline passes: the sync deletes the pods and writes the status, into the
    // silence; those requests must give up.
    let writes_given_up = async || {
        let mut n = 0.0;
        for verb in ["delete", "update"] {
            n += controller
                .counter(
                    "jobkeeper_kube_api_requests_total",
                    &[("code", "0"), ("verb", verb)],
                )
                .await;
        }
        n
    };
    wait_for("a write to time out", Duration::from_secs(60), || async {
        (writes_given_up().await > 0.0).then_some(())
    })
    .await;
    wait_for("/readyz false", Duration::from_secs(60), || async {
        let warned = controller.log_text().contains(UNHEALTHY_LINE);
        let metric = controller.metrics().await;
        let unhealthy = metric
            .lines()
            .any(|l| l.starts_with("jobkeeper_watch_healthy{") && l.ends_with(" 0"));
        (!ready(controller).await && warned && unhealthy).then_some(())
    })
    .await;
    assert!(healthz_ok(controller).await);
    // Bounded retries while the network stays silent.
    let tries = unanswered(controller).await;
    wait_for("more tries", Duration::from_secs(60), || async {
        (unanswered(controller).await >= tries + 2.0).then_some(())
    })
    .await;
    assert!(unanswered(controller).await < tries + 40.0, "a hot loop");

    proxy.restore();
    wait_for("/readyz true", Duration::from_secs(60), || async {
        let back = controller
            .log_text()
            .contains("the watch is connected again");
        (ready(controller).await && back).then_some(())
    })
    .await;
    // The gauge is refreshed once a second; /readyz is judged live.
    wait_for(
        "the jobs watch's gauge back to 1",
        Duration::from_secs(5),
        || async {
            let healthy = controller
                .counter("jobkeeper_watch_healthy", &[("watch", "jobs")])
                .await;
            (healthy == 1.0).then_some(())
        },
    )
    .await;
    let status = env.wait_condition("deadline", "Failed").await;
    assert_eq!(
        condition_reason(&status, "Failed").as_deref(),
        Some("DeadlineExceeded")
    );
    assert_eq!(
        (status.active, status.succeeded),
        (None, None),
        "{status:?}"
    );
    if exact_counts {
        assert_eq!(status.failed, Some(2), "{status:?}");
    }
    assert!(env.active_pods("deadline").await.is_empty());
    finish(&env, "meanwhile", 2).await;
    assert_eq!(env.controller().pid(), pid, "never restarted");
    assert!(healthz_ok(env.controller()).await);
}

/// The pod watch expires while the network is cut: pods finish meanwhile and the test
/// writes pod events until the apiserver's watch cache no longer holds the resourceVersion
/// the controller last saw (it keeps at least 75 s of events, then only its capacity). On
/// reconnecting the watch gets 410 Gone ("too old resource version"), the controller says
/// so, lists the pods again and goes on from the list: the Job completes with exactly its
/// completions, each pod counted once, and a Job created during the cut is served.
#[tokio::test]
async fn an_expired_pod_watch_relists_and_counts_stay_exact() {
    let (env, proxy) = controller_behind_proxy("api-expired").await;
    let controller = env.controller();
    let pid = controller.pid();
    let pod_lists = async || {
        controller
            .counter(
                "jobkeeper_kube_api_requests_total",
                &[("verb", "list"), ("resource", "pods"), ("code", "200")],
            )
            .await
    };
    assert_eq!(pod_lists().await, 1.0, "the initial list");

    let mut job = driven_job("exact", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(2);
    job.spec.as_mut().unwrap().completions = Some(4);
    env.create_job(&job).await;
    let first = env.wait_active("exact", 2).await;
    env.wait_status("exact", "active=2", |s| s.active == Some(2))
        .await;

    proxy.blackhole();
    // Whatever the controller saw last is at most this version.
    let seen = env
        .pods()
        .list(&ListParams::default().limit(1))
        .await
        .expect("listing pods")
        .metadata
        .resource_version
        .expect("a list resourceVersion");
    for pod in &first {
        env.succeed(pod).await;
    }
    env.create_job(&{
        let mut job = driven_job("meanwhile", Some(MANAGED_BY));
        job.spec.as_mut().unwrap().parallelism = Some(2);
        job.spec.as_mut().unwrap().completions = Some(2);
        job
    })
    .await;
    let cut = Instant::now();
    expire_pod_watches_from(&env, &seen).await;
    eprintln!("a pod watch from {seen} expired after {:?}", cut.elapsed());

    proxy.restore();
    let line = wait_for(
        "the expired watch in the log",
        Duration::from_secs(90),
        || async {
            controller
                .log_text()
                .lines()
                .find(|l| l.contains("the watch expired (410 Gone); relisting"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(
        line.contains("watch=\"pods\"") && line.contains("too old resource version"),
        "{line}"
    );
    wait_for("/readyz true", Duration::from_secs(90), || async {
        ready(controller).await.then_some(())
    })
    .await;
    // After the backoff that the watch's failures during the cut grew (up to 30 s and
    // its jitter), as client-go's reflector waits too.
    wait_for("the pods listed again", Duration::from_secs(90), || async {
        (pod_lists().await >= 2.0).then_some(())
    })
    .await;

    let status = env
        .wait_status("exact", "the two pods that finished unseen counted", |s| {
            s.succeeded == Some(2)
        })
        .await;
    assert_eq!(status.failed, None, "{status:?}");
    for pod in env.wait_active("exact", 2).await {
        env.succeed(&pod).await;
    }
    let status = env
        .wait_status("exact", "Complete, counted", |s| {
            finished_and_counted(s, "Complete")
        })
        .await;
    assert_eq!(
        (status.succeeded, status.failed, status.active),
        (Some(4), None, None),
        "{status:?}"
    );
    assert_eq!(
        env.pods_of("exact").await.len(),
        4,
        "one pod per completion"
    );
    finish(&env, "meanwhile", 2).await;
    // One relist for one expiry, not a loop of them; no sync loop either.
    assert_eq!(pod_lists().await, 2.0);
    let syncs = controller.counter("jobkeeper_job_syncs_total", &[]).await;
    assert!(syncs < 50.0, "{syncs} syncs: a hot loop?");
    assert_eq!(env.controller().pid(), pid, "never restarted");
    assert!(healthz_ok(env.controller()).await);
    env.assert_no_rejected_status().await;
}

/// Writes pod events (annotations on a pod of no Job) until a pod watch from `version`
/// gets 410 Gone: the watch cache has dropped it.
///
/// The cache keeps every event of the last 75 s, doubling its capacity when full of
/// younger ones, and beyond that only as many as its capacity. Events written at a pace
/// that fills the capacity in 80 s make it drop `version` soon after 75 s without growing;
/// written faster, it grows and takes as long again to fill.
async fn expire_pod_watches_from(env: &TestEnv, version: &str) {
    let filler: Pod = from_json(serde_json::json!({
        "metadata": {"name": "filler"},
        "spec": {
            "schedulerName": DRIVER_SCHEDULER,
            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
        },
    }));
    env.pods()
        .create(&PostParams::default(), &filler)
        .await
        .expect("creating the filler pod");
    let start = Instant::now();
    let written = std::cell::Cell::new(0u64);
    let capacity = std::cell::Cell::new((0u64, start));
    wait_for(
        &format!("a pod watch from {version} to expire"),
        Duration::from_secs(300),
        || async {
            let (mut cap, read_at) = capacity.get();
            if cap == 0 || read_at.elapsed() > Duration::from_secs(5) {
                cap = pod_watch_cache_capacity(env).await;
                capacity.set((cap, Instant::now()));
            }
            let elapsed = start.elapsed().as_millis() as u64;
            let due = cap.saturating_mul(elapsed) / 80_000;
            let batch = due.saturating_sub(written.get()).min(200);
            let first = written.get();
            futures::stream::iter(first..first + batch)
                .for_each_concurrent(8, |n| async move {
                    env.pods()
                        .patch(
                            "filler",
                            &PatchParams::default(),
                            &Patch::Merge(serde_json::json!({
                                "metadata": {"annotations": {"n": n.to_string()}}
                            })),
                        )
                        .await
                        .expect("writing a pod event");
                })
                .await;
            written.set(first + batch);
            watch_expired(env, version).await.then_some(())
        },
    )
    .await;
}

/// The capacity of the apiserver's pod watch cache (at least 1).
async fn pod_watch_cache_capacity(env: &TestEnv) -> u64 {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a metrics request");
    let text = env
        .client
        .request_text(request)
        .await
        .expect("reading the apiserver's metrics");
    let capacity = sum_metric(&text, "watch_cache_capacity", &[("resource", "pods")]);
    assert!(capacity > 0.0, "no watch_cache_capacity for pods");
    capacity as u64
}

/// Whether a pod watch from `version` is refused as too old.
async fn watch_expired(env: &TestEnv, version: &str) -> bool {
    let gone = |code: u16| code == 410;
    match env
        .pods()
        .watch(&WatchParams::default().timeout(1), version)
        .await
    {
        Err(kube::Error::Api(status)) => gone(status.code),
        Err(e) => panic!("watching pods from {version}: {e}"),
        Ok(stream) => {
            let mut stream = std::pin::pin!(stream);
            matches!(stream.next().await, Some(Ok(WatchEvent::Error(status))) if gone(status.code))
        }
    }
}

/// A controller whose pod rights come from a RoleBinding in one namespace only: a Job in
/// the other namespace gets a clear "forbidden" error in the log, retried with backoff; the
/// Job next door completes.
#[tokio::test]
async fn rbac_missing_in_one_namespace_is_reported_and_the_other_is_served() {
    let allowed = TestEnv::without_controller("api-rbac-allowed").await;
    let denied = TestEnv::without_controller("api-rbac-denied").await;
    let identity = PartialIdentity::create(&allowed).await;
    let controller = Controller::start_with_kubeconfig(
        &allowed.ns,
        &identity.kubeconfig,
        &["--namespace", &denied.ns],
    );

    let mut job = driven_job("forbidden", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(1);
    denied.create_job(&job).await;
    let line = wait_for("the forbidden error", Duration::from_secs(60), || async {
        controller
            .log_text()
            .lines()
            .find(|l| {
                l.contains(&format!("job={}/forbidden", denied.ns))
                    && l.contains("cannot create resource \"pods\"")
            })
            .map(str::to_string)
    })
    .await;
    // The refused create does not stop the sync: the status write that follows is refused
    // too, and either may be the line logged first; the create's must come.
    assert!(line.contains("creating pods"), "{line}");

    run_to_completion(&allowed, "allowed", 2).await;
    assert!(healthz_ok(&controller).await);
    // Retried with backoff, not in a loop.
    let errors = controller
        .counter("jobkeeper_kube_api_requests_total", &[("code", "403")])
        .await;
    assert!((1.0..30.0).contains(&errors), "{errors} forbidden requests");
    assert!(denied.pods_of("forbidden").await.is_empty());
    identity.delete().await;
}

/// A ServiceAccount that may read Jobs and pods everywhere (the controller watches both
/// namespaces through one cluster-wide watch) but write only in one namespace.
struct PartialIdentity {
    client: kube::Client,
    name: String,
    kubeconfig: PathBuf,
}

impl PartialIdentity {
    async fn create(allowed: &TestEnv) -> PartialIdentity {
        let client = allowed.client.clone();
        let name = format!("jobkeeper-{}", allowed.ns);
        let meta = |namespace: Option<&str>| ObjectMeta {
            name: Some(name.clone()),
            namespace: namespace.map(str::to_string),
            ..Default::default()
        };
        let pp = PostParams::default();
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &allowed.ns);
        accounts
            .create(
                &pp,
                &ServiceAccount {
                    metadata: meta(Some(&allowed.ns)),
                    ..Default::default()
                },
            )
            .await
            .expect("creating the ServiceAccount");
        let subject = Subject {
            kind: "ServiceAccount".into(),
            name: name.clone(),
            namespace: Some(allowed.ns.clone()),
            ..Default::default()
        };
        let read = |resources: &[&str], group: &str| PolicyRule {
            api_groups: Some(vec![group.into()]),
            resources: Some(resources.iter().map(|r| r.to_string()).collect()),
            verbs: ["get", "list", "watch"].map(String::from).to_vec(),
            ..Default::default()
        };
        Api::<ClusterRole>::all(client.clone())
            .create(
                &pp,
                &ClusterRole {
                    metadata: meta(None),
                    rules: Some(vec![read(&["jobs"], "batch"), read(&["pods"], "")]),
                    ..Default::default()
                },
            )
            .await
            .expect("creating the read ClusterRole");
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(
                &pp,
                &ClusterRoleBinding {
                    metadata: meta(None),
                    role_ref: role_ref(&name),
                    subjects: Some(vec![subject.clone()]),
                },
            )
            .await
            .expect("creating the read ClusterRoleBinding");
        Api::<RoleBinding>::namespaced(client.clone(), &allowed.ns)
            .create(
                &pp,
                &RoleBinding {
                    metadata: meta(Some(&allowed.ns)),
                    role_ref: role_ref("jobkeeper"),
                    subjects: Some(vec![subject]),
                },
            )
            .await
            .expect("creating the RoleBinding in the allowed namespace");
        let token = accounts
            .create_token_request(
                &name,
                &pp,
                &TokenRequest {
                    spec: Some(TokenRequestSpec {
                        expiration_seconds: Some(3600),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .expect("a token for the ServiceAccount")
            .status
            .and_then(|s| s.token)
            .expect("a token");
        let kubeconfig = with_token(
            &cluster_dir().join("jobkeeper.kubeconfig"),
            &token,
            &allowed.ns,
        );
        PartialIdentity {
            client,
            name,
            kubeconfig,
        }
    }

    /// The cluster-wide objects outlive the namespaces; remove them.
    async fn delete(self) {
        let dp = DeleteParams::default();
        Api::<ClusterRoleBinding>::all(self.client.clone())
            .delete(&self.name, &dp)
            .await
            .ok();
        Api::<ClusterRole>::all(self.client.clone())
            .delete(&self.name, &dp)
            .await
            .ok();
    }
}

fn role_ref(cluster_role: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: cluster_role.into(),
    }
}

/// A copy of `kubeconfig` that authenticates with `token`.
fn with_token(kubeconfig: &Path, token: &str, tag: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).expect("reading kubeconfig");
    let text: String = text
        .lines()
        .map(|l| match l.split_once("token: ") {
            Some((indent, _)) => format!("{indent}token: {token}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let path = kubeconfig.with_file_name(format!("{tag}.kubeconfig"));
    std::fs::write(&path, text).expect("writing the kubeconfig");
    path
}
