//! Two jobkeeper instances with leader election: exactly one writes; the standby takes
//! over when the leader is killed (within the lease duration + 5 s) or stopped with
//! SIGTERM (within 2 s, the Lease is released); Jobs finish with exact counts across the
//! handover. A leader whose pod writes are throttled keeps its lease; a leader cut off
//! from the apiserver stops writing before its lease can expire.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::proxy::Proxy;
use support::*;

const LEASE_SECONDS: u64 = 6;
const RENEW_DEADLINE: &str = "4s";
const RETRY_PERIOD: &str = "500ms";
/// Where the tests' Leases live.
const LEASE_NAMESPACE: &str = "jobkeeper-system";

fn elected(ns: &str, identity: &str) -> Controller {
    elected_with(
        ns,
        identity,
        &cluster_dir().join("jobkeeper.kubeconfig"),
        &[],
    )
}

fn elected_with(ns: &str, identity: &str, kubeconfig: &Path, extra: &[&str]) -> Controller {
    let lease_name = format!("test-{ns}");
    let lease = format!("{LEASE_SECONDS}s");
    let mut args = vec![
        "--leader-elect",
        "--leader-elect-namespace",
        LEASE_NAMESPACE,
        "--leader-elect-lease-name",
        &lease_name,
        "--leader-elect-lease-duration",
        &lease,
        "--leader-elect-renew-deadline",
        RENEW_DEADLINE,
        "--leader-elect-retry-period",
        RETRY_PERIOD,
        "--leader-elect-identity",
        identity,
    ];
    args.extend_from_slice(extra);
    Controller::start_with_kubeconfig(ns, kubeconfig, &args)
}

async fn lease_holder(env: &TestEnv) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), LEASE_NAMESPACE);
    leases
        .get_opt(&format!("test-{}", env.ns))
        .await
        .expect("reading the Lease")
        .and_then(|l| l.spec?.holder_identity)
}

async fn is_leader(c: &Controller) -> bool {
    c.counter("jobkeeper_leader", &[]).await == 1.0
}

/// Requests that change the cluster, as the instance counted them.
async fn writes(c: &Controller) -> f64 {
    let mut n = 0.0;
    for verb in ["create", "update", "patch", "delete"] {
        for resource in ["pods", "jobs/status"] {
            n += c
                .counter(
                    "jobkeeper_kube_api_requests_total",
                    &[("verb", verb), ("resource", resource)],
                )
                .await;
        }
    }
    n
}

/// Starts two instances and returns them as (leader, standby).
async fn pair(ns: &str) -> (Controller, Controller) {
    let a = elected(ns, "a");
    let b = elected(ns, "b");
    let leader = wait_for("one leader", Duration::from_secs(30), || async {
        match (is_leader(&a).await, is_leader(&b).await) {
            (true, false) => Some('a'),
            (false, true) => Some('b'),
            _ => None,
        }
    })
    .await;
    if leader == 'a' { (a, b) } else { (b, a) }
}

async fn run_job_across(env: &TestEnv, name: &str, handover: impl AsyncFnOnce()) {
    let mut job = driven_job(name, Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(3);
    job.spec.as_mut().unwrap().completions = Some(6);
    env.create_job(&job).await;
    let pods = env.wait_active(name, 3).await;
    for pod in &pods {
        env.succeed(pod).await;
    }
    env.wait_status(name, "3 succeeded", |s| s.succeeded == Some(3))
        .await;
    handover().await;
    let pods = env.wait_active(name, 3).await;
    for pod in &pods {
        env.succeed(pod).await;
    }
    let status = env.wait_condition(name, "Complete").await;
    assert_eq!((status.succeeded, status.failed), (Some(6), None));
    assert_eq!(
        env.pods_of(name).await.len(),
        6,
        "no pod created twice across the handover"
    );
}

#[tokio::test]
async fn only_the_leader_writes_and_a_killed_leader_is_replaced_within_the_lease() {
    let env = TestEnv::without_controller("leader-kill").await;
    let (mut leader, standby) = pair(&env.ns).await;
    run_job_across(&env, "kill", async || {
        assert_eq!(writes(&standby).await, 0.0, "the standby wrote");
        assert!(writes(&leader).await > 0.0);
        leader.kill();
        let killed = Instant::now();
        wait_for(
            "the standby to lead",
            Duration::from_secs(LEASE_SECONDS + 5),
            || async { is_leader(&standby).await.then_some(()) },
        )
        .await;
        eprintln!("handover after SIGKILL took {:?}", killed.elapsed());
    })
    .await;
}

#[tokio::test]
async fn sigterm_releases_the_lease_and_the_standby_takes_over_at_once() {
    let env = TestEnv::without_controller("leader-term").await;
    let (mut leader, standby) = pair(&env.ns).await;
    run_job_across(&env, "term", async || {
        leader.signal_term();
        let stopped = Instant::now();
        wait_for("the standby to lead", Duration::from_secs(2), || async {
            is_leader(&standby).await.then_some(())
        })
        .await;
        eprintln!("handover after SIGTERM took {:?}", stopped.elapsed());
        assert!(
            leader.wait_exit(Duration::from_secs(10)),
            "the old leader exits after SIGTERM"
        );
    })
    .await;
    env.assert_no_rejected_status().await;
}

/// A leader limited to one request a second, with a Job of 40 pods to create: its Lease
/// renewals go through a client of their own, so they never wait behind the pod creates
/// and the leader keeps its lease throughout.
#[tokio::test]
async fn a_throttled_leader_keeps_its_lease() {
    let env = TestEnv::without_controller("leader-throttled").await;
    let kubeconfig = cluster_dir().join("jobkeeper.kubeconfig");
    let throttle = ["--kube-api-qps", "1", "--kube-api-burst", "1"];
    let leader = elected_with(&env.ns, "a", &kubeconfig, &throttle);
    wait_for("a to lead", Duration::from_secs(30), || async {
        is_leader(&leader).await.then_some(())
    })
    .await;
    let holder = lease_holder(&env).await.expect("a holds the Lease");
    let standby = elected_with(&env.ns, "b", &kubeconfig, &throttle);
    wait_for("b to stand by", Duration::from_secs(30), || async {
        standby
            .log_text()
            .contains("standing by for the leader lease")
            .then_some(())
    })
    .await;

    let mut job = driven_job("many", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(40);
    job.spec.as_mut().unwrap().completions = Some(40);
    env.create_job(&job).await;
    wait_for(
        "40 pods, one a second",
        Duration::from_secs(120),
        || async {
            assert_eq!(
                lease_holder(&env).await.as_deref(),
                Some(holder.as_str()),
                "the leader lost its Lease while creating pods"
            );
            assert!(is_leader(&leader).await, "the leader stepped down");
            assert!(!is_leader(&standby).await, "the standby took over");
            (env.active_pods("many").await.len() == 40).then_some(())
        },
    )
    .await;
    assert_eq!(writes(&standby).await, 0.0, "the standby wrote");
    assert!(
        !leader.log_text().contains("stepped down"),
        "{}",
        leader.log_text()
    );
}

/// The leader's network goes silent (a proxy between it and the apiserver drops
/// everything): it steps down before its lease can expire in anyone's eyes, the standby
/// takes over after expiry, and after the network comes back the old leader writes nothing
/// more. The Job finishes with exact counts.
#[tokio::test]
async fn a_partitioned_leader_steps_down_before_its_lease_expires() {
    let env = TestEnv::without_controller("leader-partition").await;
    let direct = cluster_dir().join("jobkeeper.kubeconfig");
    let proxy = Proxy::start(&direct).await;
    let leader = elected_with(&env.ns, "a", &proxy.kubeconfig(&direct), &[]);
    wait_for("a to lead", Duration::from_secs(30), || async {
        is_leader(&leader).await.then_some(())
    })
    .await;
    let standby = elected_with(&env.ns, "b", &direct, &[]);

    let mut job = driven_job("cut", Some(MANAGED_BY));
    job.spec.as_mut().unwrap().parallelism = Some(3);
    job.spec.as_mut().unwrap().completions = Some(6);
    env.create_job(&job).await;
    for pod in env.wait_active("cut", 3).await {
        env.succeed(&pod).await;
    }
    env.wait_status("cut", "3 succeeded", |s| s.succeeded == Some(3))
        .await;

    proxy.blackhole();
    wait_for("b to lead", Duration::from_secs(30), || async {
        is_leader(&standby).await.then_some(())
    })
    .await;
    // Read the old leader's log only now: its step-down must already be there.
    let log = leader.log_text();
    let stepped_down = log
        .lines()
        .find(|l| l.contains("stepped down"))
        .unwrap_or_else(|| panic!("the old leader did not step down before b led:\n{log}"));
    let since_renew: u64 = field(stepped_down, "since_last_renew_ms")
        .parse()
        .expect("since_last_renew_ms");
    assert!(
        since_renew < LEASE_SECONDS * 1000,
        "stepped down {since_renew} ms after its last renewal, past the lease: {stepped_down}"
    );
    assert!(!is_leader(&leader).await);
    let old_writes = writes(&leader).await;
    let lease_reads = async || {
        leader
            .counter(
                "jobkeeper_kube_api_requests_total",
                &[("resource", "leases"), ("code", "200")],
            )
            .await
    };
    let reads_before = lease_reads().await;

    proxy.restore();
    for pod in env.wait_active("cut", 3).await {
        env.succeed(&pod).await;
    }
    let status = env.wait_condition("cut", "Complete").await;
    assert_eq!((status.succeeded, status.failed), (Some(6), None));
    assert_eq!(env.pods_of("cut").await.len(), 6, "no pod created twice");
    // The old leader, reachable again, stands by: it reads the Lease and writes nothing.
    wait_for(
        "the old leader to read the Lease again",
        Duration::from_secs(30),
        || async { (lease_reads().await > reads_before).then_some(()) },
    )
    .await;
    assert_eq!(
        writes(&leader).await,
        old_writes,
        "the old leader wrote after stepping down"
    );
    assert!(!is_leader(&leader).await);
    env.assert_no_rejected_status().await;
}

/// The value of `key=` in a text log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}
