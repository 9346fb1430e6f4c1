//! Leader election through a coordination.k8s.io Lease (kube-lease-manager). Only the
//! leader runs the controller, so only the leader writes. A standby polls the Lease every
//! 750 ms, so a Lease released on SIGTERM changes hands within about a second; a Lease
//! that stops being renewed (the leader died) changes hands when it expires.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::LeaderArgs;
use crate::edge::metrics::SharedMetrics;
use crate::edge::server::Readiness;
use crate::runtime::{self, RuntimeConfig};

const STANDBY_POLL: Duration = Duration::from_millis(750);

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
    let new_manager = {
        let client = client.clone();
        let lease = args.leader_elect_lease_name.clone();
        let namespace = args.leader_elect_namespace.clone();
        let identity = identity.clone();
        async move || {
            LeaseManagerBuilder::new(client.clone(), &lease)
                .with_namespace(&namespace)
                .with_identity(&identity)
                .with_duration(duration)
                .with_grace((duration / 3).max(1))
                .build()
                .await
        }
    };
    // Fail fast on a Lease we can never read or create (RBAC, namespace).
    new_manager()
        .await
        .map_err(|e| anyhow::anyhow!("setting up the leader election Lease: {e}"))?;
    let (leading_tx, mut leading) = watch::channel(false);
    let (release_tx, release_rx) = watch::channel(false);
    let elector = tokio::spawn(elect(new_manager, leading_tx, release_rx));
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
///
/// kube-lease-manager re-reads a Lease only once its cached copy has expired, so a
/// standby holding one manager would notice a released Lease only at the old expiry. A
/// manager reads the Lease when it is built, so the standby builds a fresh one per poll
/// (two GETs) and keeps the one that wins.
async fn elect(
    new_manager: impl AsyncFn() -> kube_lease_manager::Result<LeaseManager>,
    leading: watch::Sender<bool>,
    mut release: watch::Receiver<bool>,
) {
    enum Step {
        Acquired(Box<LeaseManager>),
        StillLeading,
        Lost,
        Waiting,
        Failed(kube_lease_manager::LeaseManagerError),
    }
    let mut held: Option<LeaseManager> = None;
    loop {
        let step = async {
            match &held {
                Some(manager) => match manager.changed().await {
                    Ok(true) => Step::StillLeading,
                    Ok(false) => Step::Lost,
                    Err(e) => Step::Failed(e),
                },
                None => {
                    let manager = match new_manager().await {
                        Ok(m) => m,
                        Err(e) => return Step::Failed(e),
                    };
                    match tokio::time::timeout(STANDBY_POLL, manager.changed()).await {
                        Ok(Ok(true)) => Step::Acquired(Box::new(manager)),
                        Ok(Ok(false)) | Err(_) => Step::Waiting,
                        Ok(Err(e)) => Step::Failed(e),
                    }
                }
            }
        };
        let released = async { release.wait_for(|r| *r).await.is_ok() };
        let step = tokio::select! {
            _ = released => None,
            step = step => Some(step),
        };
        let Some(step) = step else {
            if let Some(manager) = held.take() {
                match manager.release().await {
                    Ok(()) => info!("released the leader lease"),
                    Err(e) => warn!(error = %e, "could not release the leader lease"),
                }
            }
            return;
        };
        match step {
            Step::Acquired(manager) => {
                held = Some(*manager);
                leading.send(true).ok();
            }
            Step::StillLeading | Step::Waiting => {}
            Step::Lost => {
                held = None;
                leading.send(false).ok();
            }
            Step::Failed(e) => {
                // Unsure whether we still hold the Lease: step down rather than risk two
                // writers.
                warn!(error = %e, "leader lease error");
                if held.take().is_some() {
                    leading.send(false).ok();
                }
                tokio::time::sleep(STANDBY_POLL).await;
            }
        }
    }
}
