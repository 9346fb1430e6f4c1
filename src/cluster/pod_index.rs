//! Pods by controller, so a sync reads its Job's pods without scanning the whole pod cache.
//!
//! The index holds keys only; the pods themselves stay in the reflector's store, once. Each
//! key is held once too, shared by both maps, and without the resourceVersion and UID a
//! key may carry (neither takes part in lookups): a Job of 10,000 pods keeps 10,000 keys.
//! The index is fed by the same watch events as the store, right after it, so the two
//! agree, and a relist rebuilds it the way the store rebuilds itself: aside, then swapped in
//! whole.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, ObjectRefExtra, Store};
use kube::runtime::watcher::Event;

/// What a pod is filed under: its controller's UID, or "no controller" in its namespace
/// (adoption candidates).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    Controller(String),
    Orphan(String),
}

fn owner_of(pod: &Pod) -> Owner {
    match controller_of(pod) {
        Some(o) => Owner::Controller(o.uid.clone()),
        None => Owner::Orphan(pod.metadata.namespace.clone().unwrap_or_default()),
    }
}

type Key = Arc<ObjectRef<Pod>>;

#[derive(Default)]
struct Files {
    by_owner: HashMap<Owner, HashSet<Key>>,
    filed_under: HashMap<Key, Owner>,
}

impl Files {
    fn file(&mut self, pod: &Pod) {
        let mut key = ObjectRef::from_obj(pod);
        key.extra = ObjectRefExtra::default();
        self.remove(&key);
        let key = Arc::new(key);
        let owner = owner_of(pod);
        self.by_owner
            .entry(owner.clone())
            .or_default()
            .insert(Arc::clone(&key));
        self.filed_under.insert(key, owner);
    }

    fn remove(&mut self, key: &ObjectRef<Pod>) {
        if let Some(owner) = self.filed_under.remove(key)
            && let Some(keys) = self.by_owner.get_mut(&owner)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }
}

#[derive(Default)]
struct State {
    current: Files,
    /// Being built by a relist, swapped in at its end.
    relisting: Option<Files>,
}

#[derive(Clone, Default)]
pub struct PodIndex {
    state: Arc<RwLock<State>>,
}

impl PodIndex {
    /// Applies one watch event (after the pod store has applied it).
    pub fn apply(&self, event: &Event<Pod>) {
        let mut state = self.state.write().expect("pod index lock");
        match event {
            Event::Apply(pod) => state.current.file(pod),
            Event::Delete(pod) => state.current.remove(&ObjectRef::from_obj(pod)),
            Event::Init => state.relisting = Some(Files::default()),
            Event::InitApply(pod) => {
                if let Some(files) = state.relisting.as_mut() {
                    files.file(pod);
                }
            }
            Event::InitDone => {
                if let Some(files) = state.relisting.take() {
                    state.current = files;
                }
            }
        }
    }

    fn pods(&self, store: &Store<Pod>, owner: &Owner) -> Vec<Arc<Pod>> {
        let state = self.state.read().expect("pod index lock");
        state
            .current
            .by_owner
            .get(owner)
            .map(|keys| keys.iter().filter_map(|k| store.get(k)).collect())
            .unwrap_or_default()
    }

    /// The pods whose controller has this UID.
    pub fn controlled_by(&self, store: &Store<Pod>, uid: &str) -> Vec<Arc<Pod>> {
        self.pods(store, &Owner::Controller(uid.to_string()))
    }

    /// The pods in `namespace` that have no controller.
    pub fn orphans_in(&self, store: &Store<Pod>, namespace: &str) -> Vec<Arc<Pod>> {
        self.pods(store, &Owner::Orphan(namespace.to_string()))
    }
}

/// The ownerReference marked as the pod's controller.
pub fn controller_of(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// The Job's label selector; None when it has none or it cannot be read.
pub fn selector_of(job: &Job) -> Option<Selector> {
    let selector = job.spec.as_ref()?.selector.clone()?;
    Selector::try_from(selector).ok()
}

/// Pods whose controller ownerReference is `job`, and orphans in its namespace that its
/// selector matches: from the main pod cache, and for a manualSelector Job also from its
/// own watch's store (`selected`; the two hold different pods).
pub fn pods_of(
    pods: &Store<Pod>,
    index: &PodIndex,
    selected: Option<&Store<Pod>>,
    job: &Job,
) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    let selector = selector_of(job);
    let mut owned = index.controlled_by(pods, uid);
    let mut orphans = index.orphans_in(pods, ns);
    for pod in selected.map(Store::state).unwrap_or_default() {
        match controller_of(&pod) {
            Some(o) if o.uid == uid => owned.push(pod),
            Some(_) => {}
            None => orphans.push(pod),
        }
    }
    orphans.retain(|pod| {
        pod.metadata.deletion_timestamp.is_none()
            && selector.as_ref().is_some_and(|s| s.matches(pod.labels()))
    });
    (owned, orphans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn pod(name: &str, controller: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                owner_references: controller.map(|uid| {
                    vec![OwnerReference {
                        uid: uid.into(),
                        controller: Some(true),
                        kind: "Job".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Feeds events to a store and the index in the order the runtime does.
    fn feed(events: Vec<Event<Pod>>) -> (Store<Pod>, PodIndex) {
        let (reader, mut writer) = store();
        let index = PodIndex::default();
        for event in events {
            writer.apply_watcher_event(&event);
            index.apply(&event);
        }
        (reader, index)
    }

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        let mut names: Vec<String> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn files_pods_by_controller_and_orphans_by_namespace() {
        let (store, index) = feed(vec![
            Event::Init,
            Event::InitApply(pod("a", Some("j1"))),
            Event::InitApply(pod("b", Some("j2"))),
            Event::InitDone,
            Event::Apply(pod("c", Some("j1"))),
            Event::Apply(pod("d", None)),
        ]);
        assert_eq!(names(index.controlled_by(&store, "j1")), ["a", "c"]);
        assert_eq!(names(index.controlled_by(&store, "j2")), ["b"]);
        assert_eq!(names(index.orphans_in(&store, "ns")), ["d"]);
        assert!(index.orphans_in(&store, "other").is_empty());
    }

    #[test]
    fn a_pod_moves_when_its_controller_changes_and_leaves_when_deleted() {
        let (store, index) = feed(vec![
            Event::Init,
            Event::InitDone,
            Event::Apply(pod("a", Some("j1"))),
            Event::Apply(pod("a", None)),
            Event::Apply(pod("b", Some("j1"))),
            Event::Delete(pod("b", Some("j1"))),
        ]);
        assert!(index.controlled_by(&store, "j1").is_empty());
        assert_eq!(names(index.orphans_in(&store, "ns")), ["a"]);
    }

    #[test]
    fn a_relist_replaces_everything_at_its_end() {
        let (store, mut writer) = store();
        let index = PodIndex::default();
        let mut apply = |event: Event<Pod>| {
            writer.apply_watcher_event(&event);
            index.apply(&event);
        };
        apply(Event::Init);
        apply(Event::InitApply(pod("old", Some("j1"))));
        apply(Event::InitDone);
        apply(Event::Init);
        apply(Event::InitApply(pod("new", Some("j1"))));
        // Mid-relist both still answer from the previous list.
        assert_eq!(names(index.controlled_by(&store, "j1")), ["old"]);
        apply(Event::InitDone);
        assert_eq!(names(index.controlled_by(&store, "j1")), ["new"]);
    }
}
