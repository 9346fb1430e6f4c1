//! Pod classification (active, ready, terminating, finished, failed), completion
//! indexes, finish times and the "least advanced first" order used to pick pods to delete.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::PodRef;

pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

pub fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: uid(pod).to_string(),
        version: pod.metadata.resource_version.clone(),
    }
}

pub fn is_succeeded(pod: &Pod) -> bool {
    phase(pod) == "Succeeded"
}

pub fn is_finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn has_annotation(pod: &Pod, key: &str) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key))
}

pub fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    !is_finished(pod) && !is_deleting(pod)
}

/// Being deleted but not finished yet.
pub fn is_terminating(pod: &Pod) -> bool {
    !is_finished(pod) && is_deleting(pod)
}

/// Failed phase, or (unless only failed pods are replaced) being deleted without having
/// succeeded: an orphan deleted by pod GC never reaches the Failed phase.
pub fn is_failed(pod: &Pod, only_replace_failed: bool) -> bool {
    if phase(pod) == "Failed" {
        return true;
    }
    !only_replace_failed && is_deleting(pod) && !is_succeeded(pod)
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

pub fn has_finalizer(pod: &Pod, finalizer: &str) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == finalizer))
}

/// Whether the pod still holds the finalizer that keeps it until it is counted.
pub fn has_tracking_finalizer(pod: &Pod) -> bool {
    has_finalizer(pod, super::TRACKING_FINALIZER)
}

/// The completion index from the pod's annotation; `None` when missing or invalid.
pub fn completion_index(pod: &Pod) -> Option<i32> {
    let value = pod.metadata.annotations.as_ref()?.get(COMPLETION_INDEX)?;
    value.parse::<i32>().ok().filter(|i| *i >= 0)
}

fn annotation_count(pod: &Pod, key: &str) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|v| (0..=i64::from(i32::MAX)).contains(v))
        .map_or(0, |v| v as i32)
}

pub fn index_failure_count(pod: &Pod) -> i32 {
    annotation_count(pod, INDEX_FAILURE_COUNT)
}

pub fn index_ignored_failure_count(pod: &Pod) -> i32 {
    annotation_count(pod, INDEX_IGNORED_FAILURE_COUNT)
}

/// The index's failures so far, ignored ones included.
pub fn index_absolute_failure_count(pod: &Pod) -> i32 {
    index_failure_count(pod).saturating_add(index_ignored_failure_count(pod))
}

/// Sum of restart counts of init and regular containers.
pub fn restart_count(pod: &Pod) -> i64 {
    pod.status.as_ref().map_or(0, |s| {
        s.init_container_statuses
            .iter()
            .chain(s.container_statuses.iter())
            .flatten()
            .map(|c| i64::from(c.restart_count))
            .sum()
    })
}

/// A finish time further than this ahead of the controller's clock is a node clock that
/// is off, not a pod about to finish: the longest pod failure backoff, so a skew the
/// backoff could absorb still delays the next pod as upstream's would.
pub const MAX_FINISH_TIME_AHEAD: SignedDuration = SignedDuration::from_secs(600);

/// When a pod finished, for the pod failure backoff: its last container's finishedAt, else
/// the Ready=False transition, else deletion time minus grace, else creation time.
///
/// The first two are written with the node's clock. One more than
/// [`MAX_FINISH_TIME_AHEAD`] past `now` would hold the backoff until that day (a finishedAt
/// in year 9999 forever), so the timestamps the apiserver wrote stand in for it. A grace
/// period reaching before the earliest time there is (a deletionGracePeriodSeconds near the
/// int64 limit) says nothing of when the deletion was asked for: creation time then.
pub fn finish_time(pod: &Pod, now: Timestamp) -> Timestamp {
    let latest_believable = now.saturating_add(MAX_FINISH_TIME_AHEAD).unwrap_or(now);
    let reported = finish_time_from_containers(pod).or_else(|| {
        ready_condition(pod)
            .filter(|c| c.status == "False")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
    });
    if let Some(t) = reported.filter(|t| *t <= latest_believable) {
        return t;
    }
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        if let Ok(requested) = deleted.0.checked_sub(SignedDuration::from_secs(grace)) {
            return requested;
        }
    }
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

fn finish_time_from_containers(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    let sidecars: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let regular = status.container_statuses.iter().flatten();
    let sidecar = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| sidecars.contains(&c.name.as_str()));
    let mut latest: Option<Timestamp> = None;
    for c in regular.chain(sidecar) {
        let finished = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.finished_at.as_ref())?;
        latest = Some(latest.map_or(finished.0, |l| l.max(finished.0)));
    }
    latest
}

fn phase_ordinal(pod: &Pod) -> u8 {
    match phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn ready_since(pod: &Pod) -> Option<Timestamp> {
    ready_condition(pod)
        .filter(|c| c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| {
            cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
        })
}

/// "a < b" when a made less progress and should be deleted first: unscheduled < scheduled,
/// Pending < Unknown < Running, not ready < ready, ready for less time < longer, more
/// restarts < fewer, newer < older (missing timestamps first). The name breaks ties so
/// plans are deterministic.
pub fn least_advanced_first(a: &Pod, b: &Pod) -> Ordering {
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let (na, nb) = (node(a), node(b));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let by_phase = phase_ordinal(a).cmp(&phase_ordinal(b));
    if by_phase != Ordering::Equal {
        return by_phase;
    }
    if is_ready(a) != is_ready(b) {
        return if is_ready(a) {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    if is_ready(a) {
        let by_ready = later_or_missing_first(ready_since(a), ready_since(b));
        if by_ready != Ordering::Equal {
            return by_ready;
        }
    }
    let by_restarts = max_restarts(b).cmp(&max_restarts(a));
    if by_restarts != Ordering::Equal {
        return by_restarts;
    }
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let by_age = later_or_missing_first(created(a), created(b));
    if by_age != Ordering::Equal {
        return by_age;
    }
    a.metadata.name.cmp(&b.metadata.name)
}

fn later_or_missing_first(a: Option<Timestamp>, b: Option<Timestamp>) -> Ordering {
    match (a, b) {
        (a, b) if a == b => Ordering::Equal,
        (None, _) => Ordering::Less,
        (_, None) => Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

/// Whether the labels satisfy a label selector (an empty selector matches everything,
/// as for Jobs; a missing selector matches nothing).
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    if let Some(ml) = &selector.match_labels
        && ml.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.as_deref().unwrap_or_default();
        let value = labels.get(&expr.key);
        let ok = match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::plan::testing::*;

    #[test]
    fn a_deletion_grace_period_near_the_int64_limit_leaves_the_creation_time() {
        let mut p = pod("a", "Running").deleting().created(5);
        p.0.metadata.deletion_grace_period_seconds = Some(i64::MAX);
        assert_eq!(finish_time(&p.0, now()), t(5));
        p.0.metadata.deletion_grace_period_seconds = Some(30);
        assert_eq!(finish_time(&p.0, now()), t(870));
    }

    #[test]
    fn a_finished_at_far_ahead_of_the_clock_is_not_believed() {
        let ahead = |secs: i64| pod("a", "Failed").created(5).exit("main", 1, secs).0;
        // A node clock a few seconds ahead: the backoff waits, as upstream's does.
        assert_eq!(finish_time(&ahead(1005), now()), t(1005));
        assert_eq!(finish_time(&ahead(1600), now()), t(1600));
        // Beyond the longest backoff ahead: the apiserver's creation time stands in.
        assert_eq!(finish_time(&ahead(1601), now()), t(5));
        let mut year_9999 = ahead(0);
        year_9999
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .state
            .as_mut()
            .unwrap()
            .terminated
            .as_mut()
            .unwrap()
            .finished_at = Some(Time(Timestamp::MAX));
        assert_eq!(finish_time(&year_9999, now()), t(5));
        // Far in the past is believed: the backoff from it is long over.
        assert_eq!(
            finish_time(&ahead(-1_700_000_000), now()),
            t(-1_700_000_000)
        );
    }

    #[test]
    fn index_annotations_out_of_the_int32_range_count_as_none() {
        for bogus in ["-1", "2147483648", "x", "", " 3", "+"] {
            let p = pod("a", "Running").annotation(COMPLETION_INDEX, bogus);
            assert_eq!(completion_index(&p.0), None, "{bogus:?}");
            let p = pod("a", "Failed").annotation(INDEX_FAILURE_COUNT, bogus);
            assert_eq!(index_failure_count(&p.0), 0, "{bogus:?}");
        }
        let p = pod("a", "Failed")
            .annotation(INDEX_FAILURE_COUNT, "2147483647")
            .annotation(INDEX_IGNORED_FAILURE_COUNT, "2147483647");
        assert_eq!(index_absolute_failure_count(&p.0), i32::MAX);
    }
}
