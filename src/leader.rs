//! Leader election through a coordination.k8s.io Lease (kube-lease-manager). Only the
//! leader runs the controller, so only the leader writes. A standby polls the Lease twice a
//! second, so a Lease released on SIGTERM changes hands within about half a second; a Lease
//! that stops being renewed (the leader died) changes hands when it expires.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::LeaderArgs;
use crate::metrics::SharedMetrics;
use crate::runtime::{self, RuntimeConfig};
use crate::server::Readiness;

const STANDBY_POLL: Duration = Duration::from_millis(500);

pub async fn run_elected(
    client: Client,
    args: &LeaderArgs,
    identity: String,
    config: RuntimeConfig,
    metrics: SharedMetrics,
    readiness: Readiness,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let duration = args.leader_elect_lease_duration.as_secs().max(3);
    let manager = LeaseManagerBuilder::new(client.clone(), &args.leader_elect_lease_name)
        .with_namespace(&args.leader_elect_namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("setting up the leader election Lease: {e}"))?;
    let (leading_tx, mut leading) = watch::channel(false);
    let (release_tx, release_rx) = watch::channel(false);
    let elector = tokio::spawn(elect(manager, leading_tx, release_rx));
    info!(lease = %format!("{}/{}", args.leader_elect_namespace, args.leader_elect_lease_name),
        identity = %identity, "standing by for the leader lease");
    readiness.set(true);

    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => { if r.is_err() { break; } }
            _ = stopping.wait_for(|s| *s) => break,
        }
        info!(identity = %identity, "became the leader; starting to sync Jobs");
        metrics.leader.set(1);
        readiness.set(false);
        let graceful = {
            let mut stop = stop.clone();
            async move {
                stop.wait_for(|s| *s).await.ok();
            }
        };
        let (caches, controller) =
            runtime::controller(client.clone(), config.clone(), metrics.clone(), graceful);
        let ready = readiness.clone();
        let synced = tokio::spawn(async move {
            caches.wait_until_ready().await;
            ready.set(true);
            info!("caches synced");
        });
        let lost = leading.wait_for(|l| !*l);
        let stopped_gracefully = tokio::select! {
            _ = controller => true,
            _ = lost => false,
        };
        synced.abort();
        metrics.leader.set(0);
        if stopped_gracefully {
            break;
        }
        // Dropping the controller cancelled every sync in flight: no write after this.
        warn!(identity = %identity, "lost the leader lease; stopped syncing, standing by");
        readiness.set(true);
    }
    release_tx.send(true).ok();
    match elector.await {
        Ok(()) => {}
        Err(e) => warn!(error = %e, "leader election task failed"),
    }
    Ok(())
}

/// Keeps the Lease: renews it while leading, polls it while standing by, and releases it
/// when told to.
async fn elect(
    manager: LeaseManager,
    leading: watch::Sender<bool>,
    mut release: watch::Receiver<bool>,
) {
    let mut is_leader = false;
    loop {
        let step = async {
            if is_leader {
                Some(manager.changed().await)
            } else {
                tokio::time::timeout(STANDBY_POLL, manager.changed())
                    .await
                    .ok()
            }
        };
        let released = async { release.wait_for(|r| *r).await.is_ok() };
        let result = tokio::select! {
            _ = released => None,
            result = step => Some(result),
        };
        let Some(result) = result else {
            if is_leader {
                match manager.release().await {
                    Ok(()) => info!("released the leader lease"),
                    Err(e) => warn!(error = %e, "could not release the leader lease"),
                }
            }
            return;
        };
        {
            match result {
                None => {}
                Some(Ok(now_leading)) => {
                    is_leader = now_leading;
                    leading.send(now_leading).ok();
                }
                Some(Err(e)) => {
                    // Unsure whether we still hold the Lease: step down rather than risk
                    // two writers.
                    warn!(error = %e, "leader lease error");
                    if is_leader {
                        is_leader = false;
                        leading.send(false).ok();
                    }
                    tokio::time::sleep(STANDBY_POLL).await;
                }
            }
        }
    }
}
