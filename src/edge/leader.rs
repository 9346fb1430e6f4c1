//! Leader election: only the leader runs the controller, so only the leader writes.
//!
//! A standby looks at the Lease every retry period and takes it once it has expired in its
//! own eyes ([`super::elector`]). The leader renews every retry period through a client of
//! its own (no request limit, a deadline per request); if it has not renewed successfully
//! within the renew deadline, counted from the start of its last successful renewal, it
//! drops the controller (every sync in flight with it) and stands by, before any standby
//! can see its lease expire. On SIGTERM the leader finishes its syncs and releases the
//! Lease, so a standby takes over at its next look.

use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::LeaderArgs;
use crate::edge::elector::{Candidate, Elector, Round, Timing};
use crate::edge::metrics::SharedMetrics;
use crate::edge::server::Readiness;
use crate::runtime::{self, RuntimeConfig};

/// What the elected instance runs with.
pub struct Election {
    /// The Lease's own client (see [`crate::act::client::build_unlimited`]).
    pub lease_client: Client,
    /// The controller's client.
    pub client: Client,
    pub candidate: Candidate,
    pub config: RuntimeConfig,
    pub metrics: SharedMetrics,
    pub readiness: Readiness,
}

pub fn timing(args: &LeaderArgs) -> Timing {
    Timing {
        lease_duration: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry_period: args.leader_elect_retry_period,
    }
}

pub async fn run_elected(
    election: Election,
    args: &LeaderArgs,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let timing = timing(args);
    let identity = election.candidate.identity.clone();
    let mut elector = Elector::new(
        election.lease_client.clone(),
        &args.leader_elect_namespace,
        &args.leader_elect_lease_name,
        election.candidate.clone(),
        timing,
    );
    info!(lease = %format!("{}/{}", args.leader_elect_namespace, args.leader_elect_lease_name),
        identity = %identity, "standing by for the leader lease");
    election.readiness.set_synced(true);

    let mut stopping = stop.clone();
    loop {
        let acquired = tokio::select! {
            acquired = acquire(&mut elector, &timing) => acquired?,
            _ = stopping.wait_for(|s| *s) => break,
        };
        info!(identity = %identity, "became the leader; starting to sync Jobs");
        if lead(&election, &mut elector, &timing, acquired, stop.clone()).await {
            release(&mut elector, &timing).await;
            break;
        }
        election.readiness.set_synced(true);
    }
    Ok(())
}

/// How long the syncs in flight may finish after SIGTERM before they are dropped: the
/// Lease is released only after them, and the standby should not wait for a slow one
/// (dropping a sync is safe: the finalizers keep every count).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Resolves [`SHUTDOWN_GRACE`] after `stop` turned true.
async fn shutdown_deadline(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        return std::future::pending().await;
    }
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

/// What the leader logs when it steps down: no write of this process follows until it
/// becomes the leader again (the chaos checker counts terms by it).
pub const STEPPED_DOWN: &str = "stepped down: stopped syncing Jobs before the lease could expire";

/// Runs the controller while we hold the Lease. True when it stopped on SIGTERM; false
/// when we stepped down (the controller and every sync in it dropped: no write after this).
async fn lead(
    election: &Election,
    elector: &mut Elector,
    timing: &Timing,
    acquired: Instant,
    stop: watch::Receiver<bool>,
) -> bool {
    election.metrics.leader.set(1);
    election.readiness.set_synced(false);
    let graceful = {
        let mut stop = stop.clone();
        async move {
            stop.wait_for(|s| *s).await.ok();
        }
    };
    let (caches, controller) = runtime::controller(
        election.client.clone(),
        election.config.clone(),
        election.metrics.clone(),
        graceful,
    );
    let ready = election.readiness.clone();
    let synced = tokio::spawn(async move {
        caches.wait_until_ready().await;
        ready.set_synced(true);
        info!("caches synced");
    });
    let stopped_gracefully = tokio::select! {
        _ = controller => true,
        () = shutdown_deadline(stop.clone()) => {
            warn!(after_ms = SHUTDOWN_GRACE.as_millis() as u64,
                "syncs still running after SIGTERM; dropped them to hand the Lease over");
            true
        }
        lost = hold(elector, timing, acquired) => {
            warn!(
                identity = %elector.identity(),
                reason = %lost.reason,
                since_last_renew_ms = lost.since_last_renew.as_millis() as u64,
                lease_duration_ms = timing.lease_duration.as_millis() as u64,
                "{STEPPED_DOWN}; standing by"
            );
            false
        }
    };
    synced.abort();
    election.metrics.leader.set(0);
    stopped_gracefully
}

/// Tries for the Lease every retry period until we hold it; returns when the successful
/// request started (the renew deadline counts from there).
async fn acquire(elector: &mut Elector, timing: &Timing) -> anyhow::Result<Instant> {
    let mut first = true;
    loop {
        let started = Instant::now();
        match elector.try_acquire_or_renew().await {
            Ok(Round::Held) => return Ok(started),
            Ok(Round::HeldBy(_)) | Ok(Round::Conflict) => {}
            Err(e) if first && is_permanent(&e) => {
                // RBAC or a missing namespace: waiting will not help.
                anyhow::bail!("cannot use the leader election Lease: {e}");
            }
            Err(e) => warn!(error = %e, "could not read the leader Lease; retrying"),
        }
        first = false;
        tokio::time::sleep(timing.retry_period).await;
    }
}

/// Why the leader stepped down.
struct Lost {
    reason: String,
    since_last_renew: Duration,
}

/// Renews the Lease every retry period; returns once another holder shows up or no renewal
/// succeeded within the renew deadline. Each attempt is cut off at that deadline, so a hung
/// request cannot keep us leading past it.
async fn hold(elector: &mut Elector, timing: &Timing, acquired: Instant) -> Lost {
    let mut last_renew = acquired;
    loop {
        let deadline = last_renew + timing.renew_deadline;
        let next = (Instant::now() + timing.retry_period).min(deadline);
        tokio::time::sleep_until(next.into()).await;
        let started = Instant::now();
        if started >= deadline {
            return lost(
                format!("no renewal within {:?}", timing.renew_deadline),
                last_renew,
            );
        }
        match tokio::time::timeout_at(deadline.into(), elector.try_acquire_or_renew()).await {
            Ok(Ok(Round::Held)) => {
                debug!("renewed the leader lease");
                last_renew = started;
            }
            Ok(Ok(Round::HeldBy(holder))) => {
                return lost(format!("the Lease is now held by {holder}"), last_renew);
            }
            Ok(Ok(Round::Conflict)) => debug!("the Lease changed while renewing; retrying"),
            Ok(Err(e)) => warn!(error = %e, "could not renew the leader lease; retrying"),
            Err(_) => {
                return lost(
                    format!("no renewal within {:?}", timing.renew_deadline),
                    last_renew,
                );
            }
        }
    }
}

fn lost(reason: String, last_renew: Instant) -> Lost {
    Lost {
        reason,
        since_last_renew: last_renew.elapsed(),
    }
}

/// Releases the Lease on the way out, within a renew deadline.
async fn release(elector: &mut Elector, timing: &Timing) {
    match tokio::time::timeout(timing.renew_deadline, elector.release()).await {
        Ok(Ok(true)) => info!("released the leader lease"),
        Ok(Ok(false)) => info!("the leader lease was no longer ours to release"),
        Ok(Err(e)) => warn!(error = %e, "could not release the leader lease"),
        Err(_) => warn!("could not release the leader lease in time"),
    }
}

/// An answer no retry changes: forbidden, or the namespace or API missing.
fn is_permanent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 401 || s.code == 403 || s.code == 404)
}
