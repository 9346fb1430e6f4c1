//! Pods no Job owns, for the small-foreign workload: bare long-running pods bound to the
//! fake node in a namespace of their own. kwok starts them (its finish stages select only
//! pods a Job owns, so they stay Running); every controller's pod cache sees them.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use tracing::info;

use crate::slim::SlimPod;
use crate::workload::NODE;

pub const NAMESPACE: &str = "bench-foreign";
const LABEL: &str = "jobkeeper.dev/bench-foreign";
/// Creates in flight at once: quick, yet far below the apiserver's inflight limits.
const CONCURRENCY: usize = 64;

fn pod(i: u32) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": format!("foreign-{i:06}"), "labels": { LABEL: "true" } },
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 0,
            "containers": [{ "name": "idle", "image": "registry.k8s.io/pause:3.10" }]
        }
    }))?)
}

/// Creates `n` pods (those left from an interrupted run are kept) and waits until kwok
/// has them all Running, so its work is done before any side runs.
pub async fn create(admin: &kube::Client, n: u32, wait: Duration) -> anyhow::Result<()> {
    crate::run::prepare_namespace(admin, NAMESPACE).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                match pods.create(&PostParams::default(), &pod(i)?).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => {
                        Err(anyhow::Error::new(e).context(format!("creating foreign pod {i}")))
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    info!(
        pods = n,
        secs = started.elapsed().as_secs(),
        "foreign pods created"
    );
    let deadline = Instant::now() + wait;
    loop {
        let running = count_running(admin).await?;
        if running >= u64::from(n) {
            info!(
                pods = n,
                secs = started.elapsed().as_secs(),
                "foreign pods running"
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {running} of {n} foreign pods Running after {wait:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Foreign pods Running now, listed in pages of slim pods.
async fn count_running(admin: &kube::Client) -> anyhow::Result<u64> {
    let pods: Api<SlimPod> = Api::namespaced(admin.clone(), NAMESPACE);
    let params = ListParams::default().labels(&format!("{LABEL}=true"));
    let listed = crate::slim::list_paged(&pods, params)
        .await
        .context("listing foreign pods")?;
    Ok(listed
        .iter()
        .filter(|p| p.phase.as_deref() == Some("Running"))
        .count() as u64)
}

/// Deletes every foreign pod at once and waits until they are gone.
pub async fn delete(admin: &kube::Client, wait: Duration) -> anyhow::Result<()> {
    let pods: Api<SlimPod> = Api::namespaced(admin.clone(), NAMESPACE);
    crate::slim::delete_all(&pods, wait)
        .await
        .context("deleting the foreign pods")
}
