//! Pod watches for Jobs with `spec.manualSelector: true`.
//!
//! The apiserver adds the `batch.kubernetes.io/controller-uid` label only to the pods of
//! Jobs whose selector it generated, and the main pod watch selects on that label, so it
//! never sees the pods of a Job whose author chose the selector. Each such Job of ours
//! gets a watch of its own namespace by its own selector, narrowed to the pods *without*
//! that label: those with it are in the main watch already, so every pod is cached once,
//! and a cluster with no manualSelector Job caches nothing more.
//!
//! A watch starts when the Job is first synced and stops when the Job is deleted (or is
//! found gone at a relist of the Jobs). Its events wake the Job; a pod that leaves the
//! selector while the Job still controls it goes to the same release path as the main
//! watch's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::core::{Expression, Selector};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{Event, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cluster::expectations::Expectations;
use crate::cluster::pod_decode::WatchedPod;
use crate::edge::health::{Registration, WatchSettings};

/// The label the apiserver puts on the pods of Jobs with a generated selector; the main
/// pod watch selects on it.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// Whether the Job's author chose its selector (so its pods lack the controller-uid label).
pub fn has_manual_selector(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.manual_selector) == Some(true)
}

/// The label selector of a manualSelector Job's own watch: its selector, less the pods
/// the main watch has. None when the Job's selector cannot be read.
pub fn watch_selector(job: &Job) -> Option<String> {
    let selector = job.spec.as_ref()?.selector.clone()?;
    let mut selector = Selector::try_from(selector).ok()?;
    selector.extend(Expression::DoesNotExist(CONTROLLER_UID_LABEL.into()));
    Some(selector.to_string())
}

struct SelectorWatch {
    store: Store<Pod>,
    task: JoinHandle<()>,
    /// Its place in the watch health, left when the watch stops.
    _health: Registration,
}

impl Drop for SelectorWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running watches, by Job UID.
#[derive(Clone)]
pub struct SelectorWatches {
    client: Client,
    settings: WatchSettings,
    watches: Arc<Mutex<HashMap<String, SelectorWatch>>>,
    /// Wakes the Job a watch belongs to.
    wake: UnboundedSender<ObjectRef<Job>>,
    /// Pods that left a watch's selector without being deleted (release candidates).
    left: tokio::sync::mpsc::UnboundedSender<Arc<Pod>>,
    /// Told of every pod a watch stops showing.
    expectations: Expectations,
}

/// How long a sync waits for a new watch's first list before it comes back later.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(2);

impl SelectorWatches {
    pub fn new(
        client: Client,
        settings: WatchSettings,
        (wake, left): (
            UnboundedSender<ObjectRef<Job>>,
            tokio::sync::mpsc::UnboundedSender<Arc<Pod>>,
        ),
        expectations: Expectations,
    ) -> Self {
        SelectorWatches {
            client,
            settings,
            watches: Arc::default(),
            wake,
            left,
            expectations,
        }
    }

    /// The store of the Job's own watch, started now if it is not running, once it has
    /// listed; None for a Job with a generated selector. `Err` when the first list has not
    /// come in yet: the caller must not plan from an empty store.
    pub async fn pods_store(&self, job: &Job) -> Result<Option<Store<Pod>>, NotListedYet> {
        if !has_manual_selector(job) {
            return Ok(None);
        }
        let Some(store) = self.store_of(job) else {
            return Ok(None);
        };
        match tokio::time::timeout(FIRST_LIST_WAIT, store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(Some(store)),
            _ => Err(NotListedYet),
        }
    }

    /// The pods in the Job's own watch right now, if it has one (for cleanup).
    pub fn cached_pods(&self, uid: &str) -> Vec<Arc<Pod>> {
        let watches = self.watches.lock().expect("selector watches lock");
        watches
            .get(uid)
            .map(|w| w.store.state())
            .unwrap_or_default()
    }

    pub fn stop(&self, uid: &str) {
        let stopped = self
            .watches
            .lock()
            .expect("selector watches lock")
            .remove(uid);
        if stopped.is_some() {
            debug!(job_uid = uid, "stopped the Job's selector watch");
        }
    }

    /// Stops the watches of Jobs no longer in `jobs` (deleted while nobody was looking).
    pub fn retain_jobs_in(&self, jobs: &Store<Job>) {
        let live: std::collections::HashSet<String> =
            jobs.state().iter().filter_map(|j| j.uid()).collect();
        self.watches
            .lock()
            .expect("selector watches lock")
            .retain(|uid, _| live.contains(uid));
    }

    fn store_of(&self, job: &Job) -> Option<Store<Pod>> {
        let uid = job.uid()?;
        let mut watches = self.watches.lock().expect("selector watches lock");
        if let Some(w) = watches.get(&uid) {
            return Some(w.store.clone());
        }
        let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
        let Some(selector) = watch_selector(job) else {
            warn!(job = %key, "the Job's selector cannot be read; its pods are not watched");
            return None;
        };
        let (store, writer) = reflector::store();
        let api: Api<WatchedPod> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let health = self.settings.health.register(
            "manualSelector pods",
            api.resource_url(),
            Some(&selector),
        );
        let task = tokio::spawn(self.run(api, job, selector.clone(), writer));
        info!(job = %key, selector = %selector, "watching the pods of a manualSelector Job");
        watches.insert(
            uid,
            SelectorWatch {
                store: store.clone(),
                task,
                _health: health,
            },
        );
        Some(store)
    }

    fn run(
        &self,
        api: Api<WatchedPod>,
        job: &Job,
        selector: String,
        writer: reflector::store::Writer<Pod>,
    ) -> impl Future<Output = ()> + use<> {
        let job_ref = ObjectRef::from_obj(job);
        let wake = self.wake.clone();
        let left = self.left.clone();
        let expectations = self.expectations.clone();
        let events = watcher(api, self.settings.config().labels(&selector))
            .default_backoff()
            .map_ok(crate::cluster::pod_decode::unwrap_watched)
            .reflect(writer);
        async move {
            events
                .for_each(|event| {
                    match event {
                        Ok(Event::Apply(_)) | Ok(Event::InitDone) => {
                            wake.unbounded_send(job_ref.clone()).ok();
                        }
                        Ok(Event::Delete(pod)) => {
                            expectations.pod_gone(&pod);
                            if pod.metadata.deletion_timestamp.is_none() {
                                left.send(Arc::new(pod)).ok();
                            }
                            wake.unbounded_send(job_ref.clone()).ok();
                        }
                        Ok(_) => {}
                        Err(e) if super::watch_expiry::is_expired(&e) => {
                            info!(job = %job_ref, error = %e, "the Job's selector watch expired (410 Gone); relisting");
                        }
                        Err(e) => {
                            warn!(job = %job_ref, error = %e, "the Job's selector watch failed; retrying");
                        }
                    }
                    futures::future::ready(())
                })
                .await;
        }
    }
}

/// A manualSelector Job's pod watch has not listed yet.
#[derive(Debug)]
pub struct NotListedYet;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use std::collections::BTreeMap;

    fn job(manual: Option<bool>, selector: LabelSelector) -> Job {
        Job {
            spec: Some(JobSpec {
                manual_selector: manual,
                selector: Some(selector),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_manual_selector_watch_leaves_the_main_watch_its_pods() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "batch".into())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        let manual = job(Some(true), selector.clone());
        assert!(has_manual_selector(&manual));
        assert_eq!(
            watch_selector(&manual).as_deref(),
            Some("app=batch,tier in (a,b),!batch.kubernetes.io/controller-uid")
        );
        assert!(!has_manual_selector(&job(None, selector.clone())));
        assert!(!has_manual_selector(&job(Some(false), selector)));
    }

    #[test]
    fn an_unreadable_selector_gets_no_watch() {
        let selector = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "Sometimes".into(),
                values: None,
            }]),
        };
        assert_eq!(watch_selector(&job(Some(true), selector)), None);
    }
}
