//! Two jobkeeper instances with leader election: exactly one writes; the standby takes
//! over when the leader is killed (within the lease duration + 5 s) or stopped with
//! SIGTERM (within 2 s, the Lease is released); Jobs finish with exact counts across the
//! handover.

mod support;

use std::time::{Duration, Instant};

use support::*;

const LEASE_SECONDS: u64 = 6;

fn elected(ns: &str, identity: &str) -> Controller {
    Controller::start(
        ns,
        &[
            "--leader-elect",
            "--leader-elect-lease-name",
            &format!("test-{ns}"),
            "--leader-elect-lease-duration",
            &format!("{LEASE_SECONDS}s"),
            "--leader-elect-identity",
            identity,
        ],
    )
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
