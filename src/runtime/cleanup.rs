//! Pods nobody syncs any more: those of our deleted Jobs, and those that left their Job's
//! selector while it still controls them.

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::core::SelectorExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Context;
use crate::act::execute;
use crate::cluster::pod_index::{controller_of, selector_of};
use crate::plan::pods::has_tracking_finalizer;

/// The two cleanup tasks, run until either channel closes.
pub(super) fn cleanup_tasks(
    ctx: Arc<Context>,
    deleted: mpsc::UnboundedReceiver<Arc<Job>>,
    left: mpsc::UnboundedReceiver<Arc<Pod>>,
) -> impl Future<Output = ()> {
    let release = release_pods_that_left_the_selector(ctx.client.clone(), ctx.jobs.clone(), left);
    let cleanup = release_pods_of_deleted_jobs(ctx, deleted);
    async move {
        tokio::select! {
            _ = release => {}
            _ = cleanup => {}
        }
    }
}

/// Removes the tracking finalizer from the pods of our deleted Jobs: nothing else will
/// count them any more, and the finalizer would keep them forever.
async fn release_pods_of_deleted_jobs(
    ctx: Arc<Context>,
    mut deleted: mpsc::UnboundedReceiver<Arc<Job>>,
) {
    while let Some(job) = deleted.recv().await {
        let uid = job.uid().unwrap_or_default();
        let ns = job.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let mut owned = ctx.pod_index.controlled_by(&ctx.pods, &uid);
        owned.extend(
            ctx.selector_watches
                .cached_pods(&uid)
                .into_iter()
                .filter(|p| controller_of(p).is_some_and(|o| o.uid == uid)),
        );
        ctx.selector_watches.stop(&uid);
        let holding: Vec<_> = owned.iter().filter(|p| has_tracking_finalizer(p)).collect();
        for pod in &holding {
            if let Err(e) = execute::remove_finalizer(&api, &pod.name_any()).await
                && execute::code_of(&e) != Some(404)
            {
                warn!(pod = %format!("{ns}/{}", pod.name_any()), error = %e,
                    "could not remove the tracking finalizer of a deleted Job's pod");
            }
        }
        if !holding.is_empty() {
            info!(job = %format!("{ns}/{}", job.name_any()), pods = holding.len(),
                "Job deleted; removed tracking finalizers from its pods");
        }
        ctx.expectations.forget(&uid);
        ctx.batcher.forget(&uid);
        ctx.backoff.lock().expect("backoff lock").remove(&uid);
        ctx.errors.lock().expect("errors lock").remove(&uid);
        ctx.not_before.lock().expect("pacing lock").remove(&uid);
    }
}

/// A pod whose labels stop matching our watch's selector leaves the cache as if deleted.
/// If a Job of ours still controls it and it still exists without matching the Job's
/// selector, release it: drop our ownerReference and the tracking finalizer (the
/// built-in controller releases such pods and cleans up orphans' finalizers too).
async fn release_pods_that_left_the_selector(
    client: Client,
    jobs: Store<Job>,
    mut left: mpsc::UnboundedReceiver<Arc<Pod>>,
) {
    while let Some(pod) = left.recv().await {
        debug!(pod = %pod.name_any(), "pod left the watch's selector");
        let Some(owner) = controller_of(&pod).cloned() else {
            continue;
        };
        let ns = pod.namespace().unwrap_or_default();
        let Some(job) = jobs.get(&ObjectRef::new(&owner.name).within(&ns)) else {
            continue;
        };
        if job.uid().as_deref() != Some(owner.uid.as_str()) {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let key = format!("{ns}/{}", pod.name_any());
        let live = match api.get_opt(&pod.name_any()).await {
            Ok(Some(live)) => live,
            Ok(None) => continue,
            Err(e) => {
                warn!(pod = %key, error = %e, "could not read a pod that left the Job's selector");
                continue;
            }
        };
        let still_matches = selector_of(&job).is_some_and(|s| s.matches(live.labels()));
        let still_ours = controller_of(&live).is_some_and(|o| o.uid == owner.uid);
        if still_matches || !still_ours || live.metadata.deletion_timestamp.is_some() {
            debug!(pod = %key, still_matches, still_ours, "pod is not for release");
            continue;
        }
        let patch = serde_json::json!({
            "metadata": {
                "uid": live.uid(),
                "ownerReferences": [{"$patch": "delete", "uid": owner.uid}],
                "$deleteFromPrimitiveList/finalizers": [crate::plan::TRACKING_FINALIZER],
            }
        });
        let params = kube::api::PatchParams::default();
        match api
            .patch(
                &live.name_any(),
                &params,
                &kube::api::Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => info!(job = %format!("{ns}/{}", job.name_any()), pod = %key,
                "released a pod that no longer matches the Job's selector"),
            Err(e) if execute::code_of(&e) == Some(404) => {}
            Err(e) => warn!(pod = %key, error = %e, "could not release a pod"),
        }
    }
}
