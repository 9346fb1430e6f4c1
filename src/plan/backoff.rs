//! Pod failure backoff: after n failures since the last success the next pod waits
//! 10 s · 2^(n−1), at most 10 min, counted from the last failure (with
//! backoffLimitPerIndex, per index from its own failures).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::pods::{self, finish_time};
use super::{BackoffRecord, Plan, plural};

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(600);

/// The record after this sync's newly finished pods (not yet counted in the status).
/// A success resets the count to the failures that finished after the latest success.
///
/// Only failures that finished after the latest success count, also when the success was
/// counted in an earlier sync. Upstream compares the two only within one sync, which its
/// 1 s batching of pod events usually gathers; jobkeeper syncs on each event, so a pod that
/// failed in the same second as its Job's last success would otherwise start a 10 s
/// backoff there.
pub fn next_record(
    old: &BackoffRecord,
    new_succeeded: &[&Pod],
    new_failed: &[&Pod],
    now: Timestamp,
) -> BackoffRecord {
    let new_success = new_succeeded.iter().map(|p| finish_time(p, now)).max();
    // `None` orders first: the later of the two, or whichever there is.
    let last_success = new_success.max(old.last_success_time);
    let mut after: Vec<Timestamp> = new_failed
        .iter()
        .map(|p| finish_time(p, now))
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    after.sort();
    let failures = after.len() as u32;
    if new_success.is_some() {
        BackoffRecord {
            failures_after_last_success: failures,
            last_failure_time: after.last().copied(),
            last_success_time: last_success,
        }
    } else {
        BackoffRecord {
            failures_after_last_success: old.failures_after_last_success.saturating_add(failures),
            last_failure_time: after.last().copied().or(old.last_failure_time),
            last_success_time: last_success,
        }
    }
}

pub fn delay_for(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let mut delay = INITIAL;
    for _ in 1..failures {
        delay *= 2;
        if delay >= MAX {
            return MAX;
        }
    }
    delay
}

/// Time left before a new pod may be created; zero when it may be created now.
pub fn remaining(failures: u32, last_failure: Option<Timestamp>, now: Timestamp) -> Duration {
    let (delay, Some(last)) = (delay_for(failures), last_failure) else {
        return Duration::ZERO;
    };
    let elapsed = now.duration_since(last);
    let elapsed = if elapsed.is_negative() {
        Duration::ZERO
    } else {
        elapsed.unsigned_abs()
    };
    delay.saturating_sub(elapsed)
}

/// Whether the Job's pod failure backoff holds back the `wanted` pods now; if so, the plan
/// says how long and comes back then.
pub fn holds_back(plan: &mut Plan, wanted: usize, now: Timestamp) -> bool {
    let failures = plan.backoff.failures_after_last_success;
    let wait = remaining(failures, plan.backoff.last_failure_time, now);
    if wait.is_zero() {
        return false;
    }
    plan.requeue_at_most(wait);
    plan.outcome.pod_backoff = Some(wait);
    plan.decisions.push(format!(
        "waiting {} s of pod failure backoff ({}) before creating {}",
        wait.as_secs(),
        plural(failures as usize, "failure"),
        plural(wanted, "pod")
    ));
    true
}

/// backoffLimitPerIndex: the `indexes` whose backoff has passed. Each index waits from its
/// last failed pod's finish time, by that index's failures so far. When none may start
/// yet, the plan comes back for the soonest.
pub fn indexes_past_backoff(
    last_failed: &BTreeMap<i32, &Pod>,
    indexes: Vec<i32>,
    now: Timestamp,
    plan: &mut Plan,
) -> Vec<i32> {
    let mut ready_now = Vec::new();
    let mut soonest: Option<Duration> = None;
    for ix in indexes {
        let wait = last_failed.get(&ix).map_or(Duration::ZERO, |last| {
            let failures = (pods::index_absolute_failure_count(last) as u32).saturating_add(1);
            remaining(failures, Some(finish_time(last, now)), now)
        });
        if wait.is_zero() {
            ready_now.push(ix);
        } else {
            soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
        }
    }
    if ready_now.is_empty()
        && let Some(wait) = soonest
    {
        plan.requeue_at_most(wait);
        plan.outcome.pod_backoff = Some(wait);
        plan.decisions
            .push(format!("waiting {} s of per-index backoff", wait.as_secs()));
    }
    ready_now
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    use crate::plan::BackoffRecord;
    use crate::plan::testing::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_and_caps_at_ten_minutes() {
        let cases = [
            (0, 0),
            (1, 10),
            (2, 20),
            (3, 40),
            (4, 80),
            (6, 320),
            (7, 600),
            (30, 600),
        ];
        for (failures, secs) in cases {
            assert_eq!(delay_for(failures), Duration::from_secs(secs), "{failures}");
        }
    }

    fn finished(phase: &str, at: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "finishedAt": at}}
            }]}
        }))
        .unwrap()
    }

    /// The sync's clock, a minute after the pods above finished.
    fn t0() -> Timestamp {
        "2026-01-01T00:01:00Z".parse().unwrap()
    }

    #[test]
    fn a_failure_counts_only_after_the_last_success_even_one_sync_later() {
        let success = finished("Succeeded", "2026-01-01T00:00:05Z");
        let record = next_record(&BackoffRecord::default(), &[&success], &[], t0());
        assert_eq!(record.failures_after_last_success, 0);
        // Finished in the same second as the success, seen by the next sync: not after it.
        let same_second = finished("Failed", "2026-01-01T00:00:05Z");
        let record = next_record(&record, &[], &[&same_second], t0());
        assert_eq!(record.failures_after_last_success, 0);
        assert_eq!(record.last_failure_time, None);
        let later = finished("Failed", "2026-01-01T00:00:07Z");
        let record = next_record(&record, &[], &[&later], t0());
        assert_eq!(record.failures_after_last_success, 1);
        assert_eq!(
            record.last_failure_time,
            Some("2026-01-01T00:00:07Z".parse().unwrap())
        );
        // A success in one sync with failures on both sides of it keeps the later ones.
        let earlier = finished("Failed", "2026-01-01T00:00:08Z");
        let success = finished("Succeeded", "2026-01-01T00:00:09Z");
        let last = finished("Failed", "2026-01-01T00:00:10Z");
        let record = next_record(&record, &[&success], &[&earlier, &last], t0());
        assert_eq!(record.failures_after_last_success, 1);
        assert_eq!(
            record.last_success_time,
            Some("2026-01-01T00:00:09Z".parse().unwrap())
        );
    }

    #[test]
    fn remaining_backoff_counts_from_last_failure() {
        let last: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-01-01T00:00:15Z".parse().unwrap();
        assert_eq!(remaining(2, Some(last), now), Duration::from_secs(5));
        assert_eq!(remaining(1, Some(last), now), Duration::ZERO);
        assert_eq!(remaining(3, None, now), Duration::ZERO);
    }

    #[test]
    fn failed_pod_is_counted_once_and_replaced_after_backoff() {
        let j = running(job(Some(1), 1), 1);
        let pods = [pod("a", "Failed").exit("main", 1, 995)];
        let p = run(&j, &pods);
        let s = p.status.clone().unwrap();
        assert_eq!(uncounted(&s).1, vec!["a-uid"]);
        assert_eq!(s.active, None);
        assert!(
            p.create.is_empty(),
            "backoff of 10 s after the failure at 995"
        );
        assert_eq!(p.requeue_after, Some(Duration::from_secs(5)));
        assert_eq!(p.backoff.failures_after_last_success, 1);
        assert_eq!(p.backoff.last_failure_time, Some(t(995)));
        // Once the backoff has passed, the replacement is created; the failure is not recounted.
        let late = [pod("a", "Failed").exit("main", 1, 900)];
        let p2 = run(&j, &late);
        assert_eq!(p2.create.len(), 1);
    }

    #[test]
    fn pod_backoff_delays_creation_and_requeues() {
        let j = running(job(Some(1), 1), 0);
        let cases = [
            (1, 995, 5),
            (2, 990, 10),
            (3, 1000, 40),
            (7, 700, 300),
            (2, 900, 0),
        ];
        for (failures, last, wait) in cases {
            let b = BackoffRecord {
                failures_after_last_success: failures,
                last_failure_time: Some(t(last)),
                ..BackoffRecord::default()
            };
            let p = plan_with(&j, &[], &[], &HashSet::new(), &b);
            if wait == 0 {
                assert_eq!(p.create.len(), 1, "{failures}");
            } else {
                assert!(p.create.is_empty(), "{failures}");
                assert_eq!(
                    p.requeue_after,
                    Some(Duration::from_secs(wait)),
                    "{failures}"
                );
            }
        }
    }

    #[test]
    fn backoff_never_writes_active_zero_while_pods_run() {
        // Upstream issue 139428: during backoff the built-in controller wrote active=0.
        let j = running(job(Some(3), 2), 1);
        let b = BackoffRecord {
            failures_after_last_success: 2,
            last_failure_time: Some(t(995)),
            ..BackoffRecord::default()
        };
        let p = plan_with(&j, &[pod("a", "Running").ready()], &[], &HashSet::new(), &b);
        let s = status_after(&j, &p);
        assert_eq!(s.active, Some(1));
        assert!(p.create.is_empty());
    }

    #[test]
    fn a_success_resets_the_backoff_record() {
        let j = running(job(Some(3), 1), 0);
        let b = BackoffRecord {
            failures_after_last_success: 3,
            last_failure_time: Some(t(990)),
            ..BackoffRecord::default()
        };
        let pods = [
            pod("s", "Succeeded").exit("main", 0, 995),
            pod("f", "Failed").exit("main", 1, 999),
        ];
        let p = plan_with(&j, &pods, &[], &HashSet::new(), &b);
        assert_eq!(p.backoff.failures_after_last_success, 1);
        assert_eq!(p.backoff.last_failure_time, Some(t(999)));
    }
}
