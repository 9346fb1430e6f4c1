//! Slim pods: what the caches keep of a pod.
//!
//! Most of a pod is of no use to the planner: managedFields, the spec's containers,
//! volumes and tolerations, and the status's addresses, images and messages. [`slim_pod`]
//! cuts a full pod down; [`WatchedPod`] decodes the same slim pod straight from the
//! watch's JSON, whose other fields the JSON reader skips without building them (decoding
//! full pods cost more CPU than planning did for a Job of thousands of pods). A finished
//! pod stays cached until its Job is gone, so every byte kept is kept per completion.
//!
//! Every time the watch decodes is read with [`lenient_time`]: a node's clock can write a
//! time in the last hours of year 9999, which the apiserver holds but k8s-openapi's `Time`
//! does not, and one such pod would fail every list and watch of pods it comes in.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use kube::runtime::watcher::Event;
use serde::{Deserialize, Deserializer};

use crate::cluster::lenient_time;
use crate::plan::RELEASED_ANNOTATION;

/// A pod as the pod watch decodes it; `.0` is what [`slim_pod`] makes of the full pod.
#[derive(Clone, Debug)]
pub struct WatchedPod(pub Pod);

/// The pod watch decodes [`WatchedPod`]s; the caches hold the pods inside.
pub fn unwrap_watched(event: Event<WatchedPod>) -> Event<Pod> {
    match event {
        Event::Apply(p) => Event::Apply(p.0),
        Event::Delete(p) => Event::Delete(p.0),
        Event::Init => Event::Init,
        Event::InitApply(p) => Event::InitApply(p.0),
        Event::InitDone => Event::InitDone,
    }
}

#[derive(Deserialize)]
struct Wire {
    metadata: Meta,
    #[serde(default)]
    spec: Option<Spec>,
    #[serde(default)]
    status: Option<Status>,
}

/// ObjectMeta without managedFields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "lenient_time::option_time")]
    creation_timestamp: Option<Time>,
    #[serde(default)]
    deletion_grace_period_seconds: Option<i64>,
    #[serde(default, deserialize_with = "lenient_time::option_time")]
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    finalizers: Option<Vec<String>>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    generation: Option<i64>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    init_containers: Option<Vec<InitContainer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitContainer {
    name: String,
    #[serde(default)]
    restart_policy: Option<String>,
}

/// What the caches keep of a pod's status: the phase and reason, each condition's type,
/// status, reason and transition time, and each container's name, restart count and state
/// (a terminated state without its message and container ID). Addresses, images, QoS
/// class, resources and messages go. The watch decodes only these fields (of a container
/// status the JSON reader skips the image, IDs, last state and resources); [`slim_pod`]
/// takes them from a full status.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, deserialize_with = "slim_conditions")]
    conditions: Option<Vec<PodCondition>>,
    #[serde(default)]
    container_statuses: Option<Vec<ContainerOutcome>>,
    #[serde(default)]
    init_container_statuses: Option<Vec<ContainerOutcome>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerOutcome {
    name: String,
    #[serde(default)]
    restart_count: i32,
    #[serde(default, deserialize_with = "slim_container_state")]
    state: Option<ContainerState>,
}

/// What [`Status`] keeps of a pod condition, as the watch decodes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConditionWire {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, deserialize_with = "lenient_time::option_time")]
    last_transition_time: Option<Time>,
}

fn slim_conditions<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<PodCondition>>, D::Error> {
    let conditions = Option::<Vec<ConditionWire>>::deserialize(deserializer)?;
    Ok(conditions.map(|list| {
        list.into_iter()
            .map(|c| PodCondition {
                type_: c.type_,
                status: c.status,
                reason: c.reason,
                last_transition_time: c.last_transition_time,
                ..PodCondition::default()
            })
            .collect()
    }))
}

/// What [`slim_state`] keeps of a container's state, as the watch decodes it.
#[derive(Deserialize)]
struct StateWire {
    #[serde(default)]
    running: Option<RunningWire>,
    #[serde(default)]
    terminated: Option<TerminatedWire>,
    #[serde(default)]
    waiting: Option<WaitingWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunningWire {
    #[serde(default, deserialize_with = "lenient_time::option_time")]
    started_at: Option<Time>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TerminatedWire {
    exit_code: i32,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    signal: Option<i32>,
    #[serde(default, deserialize_with = "lenient_time::option_time")]
    started_at: Option<Time>,
    #[serde(default, deserialize_with = "lenient_time::option_time")]
    finished_at: Option<Time>,
}

#[derive(Deserialize)]
struct WaitingWire {
    #[serde(default)]
    reason: Option<String>,
}

fn slim_container_state<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ContainerState>, D::Error> {
    let state = Option::<StateWire>::deserialize(deserializer)?;
    Ok(state.map(|s| ContainerState {
        running: s.running.map(|r| ContainerStateRunning {
            started_at: r.started_at,
        }),
        terminated: s.terminated.map(|t| ContainerStateTerminated {
            exit_code: t.exit_code,
            finished_at: t.finished_at,
            reason: t.reason,
            signal: t.signal,
            started_at: t.started_at,
            ..ContainerStateTerminated::default()
        }),
        waiting: s.waiting.map(|w| ContainerStateWaiting {
            reason: w.reason,
            message: None,
        }),
    }))
}

impl From<PodStatus> for Status {
    fn from(s: PodStatus) -> Status {
        let outcomes = |list: Option<Vec<ContainerStatus>>| {
            list.map(|list| {
                list.into_iter()
                    .map(|c| ContainerOutcome {
                        name: c.name,
                        restart_count: c.restart_count,
                        state: c.state,
                    })
                    .collect()
            })
        };
        Status {
            phase: s.phase,
            reason: s.reason,
            conditions: s.conditions,
            container_statuses: outcomes(s.container_statuses),
            init_container_statuses: outcomes(s.init_container_statuses),
        }
    }
}

impl Status {
    fn into_pod_status(self) -> PodStatus {
        let containers = |list: Option<Vec<ContainerOutcome>>| {
            list.map(|list| {
                shrunk(
                    list.into_iter()
                        .map(|c| ContainerStatus {
                            name: c.name,
                            restart_count: c.restart_count,
                            state: c.state.map(slim_state),
                            ..ContainerStatus::default()
                        })
                        .collect(),
                )
            })
        };
        PodStatus {
            phase: self.phase,
            reason: self.reason,
            conditions: self.conditions.map(|list| {
                shrunk(
                    list.into_iter()
                        .map(|c| PodCondition {
                            type_: c.type_,
                            status: c.status,
                            reason: c.reason,
                            last_transition_time: c.last_transition_time,
                            ..PodCondition::default()
                        })
                        .collect(),
                )
            }),
            container_statuses: containers(self.container_statuses),
            init_container_statuses: containers(self.init_container_statuses),
            ..PodStatus::default()
        }
    }
}

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Wire {
            metadata: m,
            spec,
            status,
        } = Wire::deserialize(d)?;
        let mut annotations = m.annotations;
        keep_planner_annotations(&mut annotations);
        let spec = spec.map(|s| {
            slim_spec(
                s.node_name,
                s.init_containers
                    .into_iter()
                    .flatten()
                    .map(|c| (c.name, c.restart_policy)),
            )
        });
        Ok(WatchedPod(Pod {
            metadata: ObjectMeta {
                annotations,
                creation_timestamp: m.creation_timestamp,
                deletion_grace_period_seconds: m.deletion_grace_period_seconds,
                deletion_timestamp: m.deletion_timestamp,
                finalizers: m.finalizers.map(shrunk),
                generate_name: m.generate_name,
                generation: m.generation,
                labels: m.labels,
                name: m.name,
                namespace: m.namespace,
                owner_references: m.owner_references.map(shrunk),
                resource_version: m.resource_version,
                uid: m.uid,
                managed_fields: None,
                self_link: None,
            },
            spec,
            status: status.map(Status::into_pod_status),
        }))
    }
}

/// Of a pod's spec the planner reads only the node name and which init containers are
/// sidecars (restartPolicy Always); the rest (containers, volumes, tolerations) goes. Of
/// its status, see [`Status`].
pub fn slim_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    keep_planner_annotations(&mut meta.annotations);
    meta.finalizers = meta.finalizers.take().map(shrunk);
    meta.owner_references = meta.owner_references.take().map(shrunk);
    pod.status = pod.status.take().map(|s| Status::from(s).into_pod_status());
    if let Some(spec) = pod.spec.take() {
        let init = spec.init_containers.into_iter().flatten();
        pod.spec = Some(slim_spec(
            spec.node_name,
            init.map(|c| (c.name, c.restart_policy)),
        ));
    }
}

/// The only annotations the planner reads are the Job controller's own
/// (`batch.kubernetes.io/job-completion-index`, the per-index failure counts) and
/// jobkeeper's [`RELEASED_ANNOTATION`]. A pod template's own annotations (up to 256 KiB)
/// are copied into every pod; keeping them would cost that much per cached pod for nothing.
const PLANNER_ANNOTATIONS: &str = "batch.kubernetes.io/";

fn keep_planner_annotations(annotations: &mut Option<BTreeMap<String, String>>) {
    if let Some(a) = annotations.as_mut() {
        a.retain(|key, _| key.starts_with(PLANNER_ANNOTATIONS) || key == RELEASED_ANNOTATION);
        if a.is_empty() {
            *annotations = None;
        }
    }
}

fn slim_state(state: ContainerState) -> ContainerState {
    ContainerState {
        running: state.running,
        terminated: state.terminated.map(|t| ContainerStateTerminated {
            exit_code: t.exit_code,
            finished_at: t.finished_at,
            reason: t.reason,
            signal: t.signal,
            started_at: t.started_at,
            ..ContainerStateTerminated::default()
        }),
        waiting: state.waiting.map(|w| ContainerStateWaiting {
            reason: w.reason,
            message: None,
        }),
    }
}

/// A decoded list grows from empty to a capacity of at least four, so a pod's one owner
/// reference or one container status would hold room for four (a `ContainerStatus` is
/// 752 bytes): give the room back.
fn shrunk<T>(mut list: Vec<T>) -> Vec<T> {
    list.shrink_to_fit();
    list
}

/// The node name and the sidecars of `init_containers` (name, restartPolicy).
fn slim_spec(
    node_name: Option<String>,
    init_containers: impl Iterator<Item = (String, Option<String>)>,
) -> PodSpec {
    let sidecars: Vec<Container> = init_containers
        .filter(|(_, policy)| policy.as_deref() == Some("Always"))
        .map(|(name, restart_policy)| Container {
            name,
            restart_policy,
            ..Container::default()
        })
        .collect();
    PodSpec {
        node_name,
        init_containers: (!sidecars.is_empty()).then_some(sidecars),
        ..PodSpec::default()
    }
}

impl Resource for WatchedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    /// A pod as the apiserver sends it, with the parts the decoder drops.
    const FULL: &str = r#"{
      "kind": "Pod", "apiVersion": "v1",
      "metadata": {
        "name": "pi-0-abcde", "generateName": "pi-0-", "namespace": "ns",
        "uid": "u-1", "resourceVersion": "42", "creationTimestamp": "2026-11-27T04:00:00Z",
        "deletionTimestamp": "2026-11-27T04:01:00Z", "deletionGracePeriodSeconds": 30,
        "labels": {"batch.kubernetes.io/controller-uid": "j-1", "job-name": "pi"},
        "annotations": {"batch.kubernetes.io/job-completion-index": "0",
                        "batch.kubernetes.io/job-index-failure-count": "1",
                        "example.com/from-the-template": "a user's note, copied to every pod",
                        "kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi",
                             "uid": "j-1", "controller": true, "blockOwnerDeletion": true}],
        "finalizers": ["batch.kubernetes.io/job-tracking"],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                           "apiVersion": "v1", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:metadata": {"f:labels": {}}}}]
      },
      "spec": {
        "nodeName": "node-1", "restartPolicy": "Never",
        "initContainers": [{"name": "log", "image": "busybox", "restartPolicy": "Always"},
                           {"name": "setup", "image": "busybox"}],
        "containers": [{"name": "pi", "image": "perl", "command": ["perl"],
                        "resources": {"limits": {"cpu": "1"}}}],
        "volumes": [{"name": "v", "emptyDir": {}}],
        "tolerations": [{"key": "k", "operator": "Exists"}]
      },
      "status": {
        "phase": "Failed", "reason": "Evicted", "message": "The node was low on memory.",
        "hostIP": "10.0.0.1", "hostIPs": [{"ip": "10.0.0.1"}], "podIP": "10.244.0.1",
        "podIPs": [{"ip": "10.244.0.1"}], "qosClass": "BestEffort",
        "startTime": "2026-11-27T04:00:01Z",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted",
                        "lastTransitionTime": "2026-11-27T04:00:30Z", "lastProbeTime": null},
                       {"type": "DisruptionTarget", "status": "True", "reason": "x",
                        "message": "evicted"}],
        "initContainerStatuses": [{"name": "log", "image": "busybox", "imageID": "sha",
                                   "ready": true, "restartCount": 1,
                                   "state": {"running": {"startedAt": "2026-11-27T04:00:02Z"}}}],
        "containerStatuses": [{"name": "pi", "image": "perl", "imageID": "", "ready": false,
                               "containerID": "containerd://abc", "started": false,
                               "lastState": {"terminated": {"exitCode": 1}},
                               "restartCount": 2, "state": {"terminated": {"exitCode": 3,
                               "reason": "Error", "message": "a long termination log",
                               "containerID": "containerd://abc",
                               "startedAt": "2026-11-27T04:00:02Z",
                               "finishedAt": "2026-11-27T04:00:30Z"}}}]
      }
    }"#;

    #[test]
    fn decodes_what_slim_pod_keeps_of_the_full_pod() {
        let WatchedPod(decoded) = serde_json::from_str(FULL).unwrap();
        let mut full: Pod = serde_json::from_str(FULL).unwrap();
        assert!(full.metadata.managed_fields.is_some());
        slim_pod(&mut full);
        assert_eq!(decoded, full);
        let spec = decoded.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(spec.init_containers.as_ref().unwrap().len(), 1);
        assert!(spec.containers.is_empty());
        assert!(spec.volumes.is_none());
    }

    #[test]
    fn only_the_job_controllers_annotations_are_kept() {
        let WatchedPod(pod) = serde_json::from_str(FULL).unwrap();
        let kept: Vec<&str> = pod
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            kept,
            [
                "batch.kubernetes.io/job-completion-index",
                "batch.kubernetes.io/job-index-failure-count"
            ]
        );
    }

    #[test]
    fn slim_status_keeps_phase_conditions_and_container_outcomes_only() {
        let WatchedPod(pod) = serde_json::from_str(FULL).unwrap();
        let status = pod.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(status.reason.as_deref(), Some("Evicted"));
        assert!(status.message.is_none() && status.start_time.is_none());
        assert!(status.host_ip.is_none() && status.pod_ips.is_none() && status.qos_class.is_none());
        let conditions = status.conditions.unwrap();
        let kept: Vec<_> = conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()))
            .collect();
        assert_eq!(
            kept,
            [
                ("Ready", "False", Some("PodCompleted")),
                ("DisruptionTarget", "True", Some("x"))
            ]
        );
        assert!(conditions[0].last_transition_time.is_some());
        assert!(conditions[1].message.is_none());
        let container = &status.container_statuses.unwrap()[0];
        assert_eq!(
            (container.name.as_str(), container.restart_count),
            ("pi", 2)
        );
        assert!(container.image.is_empty() && container.last_state.is_none());
        let terminated = container
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!(
            (terminated.exit_code, terminated.reason.as_deref()),
            (3, Some("Error"))
        );
        assert!(terminated.finished_at.is_some());
        assert!(terminated.message.is_none() && terminated.container_id.is_none());
        let sidecar = &status.init_container_statuses.unwrap()[0];
        assert_eq!(sidecar.restart_count, 1);
        assert!(sidecar.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn times_of_the_last_day_of_year_9999_read_as_the_last_timestamp() {
        let last_day = "9999-12-31T23:59:59Z";
        let text = FULL
            .replace("2026-11-27T04:01:00Z", last_day)
            .replace("2026-11-27T04:00:30Z", last_day)
            .replace("2026-11-27T04:00:02Z", last_day)
            .replace(
                "\"lastProbeTime\": null",
                "\"lastProbeTime\": \"9999-12-31T23:00:00Z\"",
            );
        assert!(
            serde_json::from_str::<Pod>(&text).is_err(),
            "the full Pod fails"
        );
        let WatchedPod(pod) = serde_json::from_str(&text).unwrap();
        let last = Some(Time(Timestamp::MAX));
        assert_eq!(pod.metadata.deletion_timestamp, last);
        assert_eq!(
            pod.metadata.creation_timestamp,
            Some(Time("2026-11-27T04:00:00Z".parse().unwrap()))
        );
        let status = pod.status.unwrap();
        let conditions = status.conditions.unwrap();
        assert_eq!(conditions[0].last_transition_time, last);
        assert!(conditions[0].last_probe_time.is_none());
        let container = &status.container_statuses.unwrap()[0];
        let terminated = container.state.clone().unwrap().terminated.unwrap();
        assert_eq!(
            (terminated.started_at, terminated.finished_at),
            (last.clone(), last.clone())
        );
        assert_eq!(terminated.exit_code, 3);
        let sidecar = &status.init_container_statuses.unwrap()[0];
        assert_eq!(
            sidecar.state.clone().unwrap().running.unwrap().started_at,
            last
        );
    }

    #[test]
    fn a_malformed_time_still_fails_the_pod() {
        let text = FULL.replace("2026-11-27T04:00:30Z", "soon");
        assert!(serde_json::from_str::<WatchedPod>(&text).is_err());
    }

    #[test]
    fn decodes_a_pod_without_spec_or_status() {
        let WatchedPod(pod) =
            serde_json::from_str(r#"{"metadata": {"name": "p", "namespace": "ns"}}"#).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
        assert!(pod.spec.is_none() && pod.status.is_none());
    }

    #[test]
    fn slim_pods_keep_what_the_planner_reads() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {"a": "b"}, "finalizers": ["batch.kubernetes.io/job-tracking"]},
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "main", "image": "busybox"}],
                "initContainers": [
                    {"name": "setup", "image": "busybox"},
                    {"name": "proxy", "image": "envoy", "restartPolicy": "Always"}
                ],
                "volumes": [{"name": "v", "emptyDir": {}}]
            },
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let before = pod.clone();
        slim_pod(&mut pod);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert!(spec.containers.is_empty() && spec.volumes.is_none());
        let sidecars = spec.init_containers.as_ref().unwrap();
        assert_eq!(sidecars.len(), 1);
        assert_eq!(
            (
                sidecars[0].name.as_str(),
                sidecars[0].restart_policy.as_deref()
            ),
            ("proxy", Some("Always"))
        );
        assert_eq!(pod.metadata.labels, before.metadata.labels);
        assert_eq!(pod.metadata.finalizers, before.metadata.finalizers);
        assert_eq!(pod.status, before.status);
    }
}
