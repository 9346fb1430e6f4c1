//! A pod as the bench's watches need it: name, uid, resourceVersion, owners and phase.
//! Decoding skips everything else (spec, annotations, managed fields, conditions), so a
//! watch over 100,000 pods costs the bench little memory and CPU. Listing and deleting
//! a namespace's pods in bulk, and removing their finalizers, are here too.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, NamespaceResourceScope, Resource};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::json;

/// Pods per list page: 100,000 pods in one response outlast the client's timeouts.
const PAGE: u32 = 5000;
const FINALIZER_TRIES: u32 = 5;

#[derive(Clone, Debug, Deserialize)]
#[serde(from = "Wire")]
pub struct SlimPod {
    /// Only name, namespace, uid, resourceVersion, ownerReferences and finalizers are set.
    pub metadata: ObjectMeta,
    pub phase: Option<String>,
}

/// The fields read off the wire; serde skips every other one without keeping it.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: WireMeta,
    #[serde(default)]
    status: Option<WireStatus>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
    #[serde(default)]
    finalizers: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct WireStatus {
    phase: Option<String>,
}

impl From<Wire> for SlimPod {
    fn from(w: Wire) -> SlimPod {
        let m = w.metadata;
        SlimPod {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                owner_references: m.owner_references,
                finalizers: m.finalizers,
                ..ObjectMeta::default()
            },
            phase: w.status.and_then(|s| s.phase),
        }
    }
}

impl Resource for SlimPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = NamespaceResourceScope;
}

impl Metadata for SlimPod {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl SlimPod {
    /// The Job that controls this pod, if any.
    pub fn job(&self) -> Option<&str> {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == "Job")
            .map(|o| o.name.as_str())
    }

    /// Whether the pod finished, and if so whether it failed.
    pub fn terminal(&self) -> Option<bool> {
        match self.phase.as_deref() {
            Some("Succeeded") => Some(false),
            Some("Failed") => Some(true),
            _ => None,
        }
    }
}

/// Every pod `params` selects, listed a page at a time.
pub async fn list_paged(pods: &Api<SlimPod>, params: ListParams) -> anyhow::Result<Vec<SlimPod>> {
    let mut params = params.limit(PAGE);
    let mut all = Vec::new();
    loop {
        let page = pods.list(&params).await.context("listing pods")?;
        all.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(all),
        }
    }
}

/// Deletes every pod of the namespace (without grace) and waits up to `wait` until they
/// are gone. A delete of many thousands of pods outlasts the apiserver's request timeout
/// (504) or the client's; the apiserver goes on with it, and the next round deletes what
/// is left.
pub async fn delete_all(pods: &Api<SlimPod>, wait: Duration) -> anyhow::Result<()> {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let deadline = Instant::now() + wait;
    loop {
        if let Err(e) = pods.delete_collection(&now, &ListParams::default()).await {
            tracing::warn!(error = %e, "deleting pods; trying again");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let left = pods.list(&ListParams::default().limit(1)).await?;
        if left.items.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pods still there {wait:?} after deletion");
        }
    }
}

/// Removes a pod's finalizers, trying the PATCH up to `FINALIZER_TRIES` times: 100,000 at
/// once (the ceiling's last Job, a cleanup) can outlast kube-apiserver's 60 s handler
/// timeout, and a controller would try again. The PATCH is idempotent; a pod already
/// gone needs nothing.
pub async fn remove_finalizer(pods: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    let patch = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    let mut tries = 0;
    loop {
        tries += 1;
        match pods.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) if tries < FINALIZER_TRIES => {
                tracing::warn!(pod = name, error = %e, tries, "removing a finalizer; trying again");
                tokio::time::sleep(Duration::from_secs(tries.into())).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_owner_and_phase_and_skips_the_rest() {
        let pod: SlimPod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "a-0", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "finalizers": ["batch.kubernetes.io/job-tracking"],
                "annotations": {"big": "x".repeat(1000)},
                "managedFields": [{"manager": "m"}],
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ReplicaSet", "name": "r", "uid": "1"},
                    {"apiVersion": "batch/v1", "kind": "Job", "name": "a", "uid": "2",
                     "controller": true}
                ]
            },
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Failed", "conditions": []}
        }))
        .expect("decodes");
        assert_eq!(pod.job(), Some("a"));
        assert_eq!(pod.terminal(), Some(true));
        assert!(pod.metadata.annotations.is_none());
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(
            pod.metadata.finalizers,
            Some(vec!["batch.kubernetes.io/job-tracking".to_string()])
        );
        let bare: SlimPod = serde_json::from_value(serde_json::json!({"metadata": {"name": "b"}}))
            .expect("decodes");
        assert_eq!((bare.job(), bare.terminal()), (None, None));
    }
}
