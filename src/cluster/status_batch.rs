//! When to write a Job's status. A change a user waits for (startTime, a condition,
//! completionTime) goes out at once. A change of counters only is batched per Job, the
//! more the busier the API server is: when pods of one Job finish in a burst, one write
//! records them all instead of one write per pod.
//!
//! The batch period follows the load. [`ApiLoad`] measures the delay a write meets now
//! (work-queue wait + rate-limiter wait + response time); above [`KEEPS_UP`] the period
//! is [`SPACING`] times the excess, never less than `--status-batch-period` nor more than
//! `--status-batch-period-max`. So a Job's writes take at most about a tenth of the time
//! the apiserver's backlog adds, and the writes saved go to the pods of the Jobs waiting.
//! The built-in controller batches every pod event for a fixed 1 s; the first write after
//! a quiet spell stays immediate here whatever the load, so an isolated pod is still
//! counted within one round trip.
//!
//! Holding a write back is always safe: nothing is lost while a pod keeps its tracking
//! finalizer, and the finalizers of a held write stay on until the write is made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::JobStatus;

use crate::act::load::{ApiLoad, Delays};

/// A delay up to this means the apiserver keeps up: counters are written at once.
pub const KEEPS_UP: Duration = Duration::from_millis(20);

/// Above [`KEEPS_UP`], the batch period is this many times the excess delay.
pub const SPACING: u32 = 10;

/// The least and the most the batch period may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub least: Duration,
    pub most: Duration,
}

/// The batch period for a delay `delay` (see the module's rule).
pub fn period_for(delay: Duration, periods: Periods) -> Duration {
    delay
        .saturating_sub(KEEPS_UP)
        .saturating_mul(SPACING)
        .min(periods.most)
        .max(periods.least)
}

/// How urgent a status change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// startTime, completionTime or a condition changes: write now.
    Now,
    /// Pods finished or were counted (succeeded, failed, the uncounted lists, the index
    /// lists): write now after a quiet spell, else at most once per batch period.
    Counters,
    /// Only active, ready or terminating move: these wait for the gauge delay too.
    Gauges,
}

/// Classifies the change from `current` to `next`.
pub fn urgency(current: Option<&JobStatus>, next: &JobStatus) -> Urgency {
    let empty = JobStatus::default();
    let current = current.unwrap_or(&empty);
    if current.start_time != next.start_time
        || current.completion_time != next.completion_time
        || current.conditions.as_deref().unwrap_or_default()
            != next.conditions.as_deref().unwrap_or_default()
    {
        return Urgency::Now;
    }
    // Everything else a status holds is a gauge: active, ready, terminating.
    if counters_equal(current, next) {
        Urgency::Gauges
    } else {
        Urgency::Counters
    }
}

fn counters_equal(a: &JobStatus, b: &JobStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    fn uncounted(s: &JobStatus) -> (&[String], &[String]) {
        let u = s.uncounted_terminated_pods.as_ref();
        (
            u.and_then(|u| u.succeeded.as_deref()).unwrap_or_default(),
            u.and_then(|u| u.failed.as_deref()).unwrap_or_default(),
        )
    }
    n(a.succeeded) == n(b.succeeded)
        && n(a.failed) == n(b.failed)
        && a.completed_indexes.as_deref().unwrap_or_default()
            == b.completed_indexes.as_deref().unwrap_or_default()
        && a.failed_indexes == b.failed_indexes
        && uncounted(a) == uncounted(b)
}

/// Per-Job write times. `hold` says how long a write should wait; `written` records one.
pub struct StatusBatcher {
    periods: Periods,
    load: Arc<ApiLoad>,
    /// Least time a gauge-only change waits from when it was first seen.
    gauge_delay: Duration,
    jobs: Mutex<HashMap<String, Writes>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Writes {
    last: Option<Instant>,
    gauges_seen: Option<Instant>,
}

impl StatusBatcher {
    pub fn new(periods: Periods, gauge_delay: Duration, load: Arc<ApiLoad>) -> Self {
        StatusBatcher {
            periods,
            load,
            gauge_delay,
            jobs: Mutex::default(),
        }
    }

    /// Least time between two counter-only writes of one Job, as the load is at `now`.
    pub fn period(&self, now: Instant) -> Duration {
        self.load_at(now).1
    }

    /// The delay requests meet at `now` and the batch period it makes.
    pub fn load_at(&self, now: Instant) -> (Delays, Duration) {
        let delays = self.load.delays(now);
        (delays, period_for(delays.total(), self.periods))
    }

    /// Whether requests wait for tokens of the client's limit at `now` (the token part of
    /// the delay above [`KEEPS_UP`]): then a sync counts finished pods before it creates.
    pub fn tokens_short(&self, now: Instant) -> bool {
        self.load.delays(now).token > KEEPS_UP
    }

    /// None: write now. Some(wait): hold the write back and plan again after `wait`.
    pub fn hold(&self, job_uid: &str, urgency: Urgency, now: Instant) -> Option<Duration> {
        if urgency == Urgency::Now {
            return None;
        }
        let period = self.period(now);
        let mut jobs = self.jobs.lock().expect("status batcher lock");
        let writes = jobs.entry(job_uid.to_string()).or_default();
        let mut due = writes.last.map_or(now, |last| last + period);
        if urgency == Urgency::Gauges {
            let seen = *writes.gauges_seen.get_or_insert(now);
            due = due.max(seen + self.gauge_delay);
        }
        (due > now).then(|| due - now)
    }

    /// A status write of this Job succeeded at `now`.
    pub fn written(&self, job_uid: &str, now: Instant) {
        let mut jobs = self.jobs.lock().expect("status batcher lock");
        jobs.insert(
            job_uid.to_string(),
            Writes {
                last: Some(now),
                gauges_seen: None,
            },
        );
    }

    /// The Job is finished or gone.
    pub fn forget(&self, job_uid: &str) {
        self.jobs
            .lock()
            .expect("status batcher lock")
            .remove(job_uid);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, UncountedTerminatedPods};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn running(active: i32, ready: i32) -> JobStatus {
        JobStatus {
            start_time: Some(Time(Timestamp::UNIX_EPOCH)),
            active: Some(active),
            ready: Some(ready),
            terminating: Some(0),
            succeeded: Some(0),
            failed: Some(0),
            uncounted_terminated_pods: Some(UncountedTerminatedPods::default()),
            ..JobStatus::default()
        }
    }

    #[test]
    fn start_conditions_and_completion_are_written_at_once() {
        assert_eq!(urgency(None, &running(1, 0)), Urgency::Now);
        let mut done = running(0, 0);
        done.conditions = Some(vec![JobCondition {
            type_: "Complete".into(),
            status: "True".into(),
            ..JobCondition::default()
        }]);
        assert_eq!(urgency(Some(&running(0, 0)), &done), Urgency::Now);
        let mut finished = running(0, 0);
        finished.completion_time = Some(Time(Timestamp::UNIX_EPOCH));
        assert_eq!(urgency(Some(&running(0, 0)), &finished), Urgency::Now);
    }

    #[test]
    fn finished_pods_are_counters_and_ready_alone_is_a_gauge() {
        let before = running(2, 1);
        assert_eq!(urgency(Some(&before), &running(2, 2)), Urgency::Gauges);
        assert_eq!(urgency(Some(&before), &running(3, 0)), Urgency::Gauges);
        let mut one_done = running(1, 1);
        one_done.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(vec!["uid-1".into()]),
            failed: None,
        });
        assert_eq!(urgency(Some(&before), &one_done), Urgency::Counters);
        let mut counted = running(1, 1);
        counted.succeeded = Some(1);
        assert_eq!(urgency(Some(&one_done), &counted), Urgency::Counters);
        let mut index = running(2, 1);
        index.completed_indexes = Some("0".into());
        assert_eq!(urgency(Some(&before), &index), Urgency::Counters);
    }

    /// A load whose delay reads `delay` at every instant before an hour from now (its one
    /// sample is taken then, and a read before a sample sees it undecayed).
    fn steady(delay: Duration) -> Arc<ApiLoad> {
        let load = Arc::new(ApiLoad::default());
        load.answered(delay, Instant::now() + Duration::from_secs(3600));
        load
    }

    const CEILING: Duration = Duration::from_secs(1);
    /// The rule alone, with no least period.
    const ADAPTIVE: Periods = Periods {
        least: Duration::ZERO,
        most: CEILING,
    };

    #[test]
    fn the_period_is_zero_while_the_apiserver_keeps_up_and_grows_with_the_delay() {
        assert_eq!(period_for(Duration::ZERO, ADAPTIVE), Duration::ZERO);
        assert_eq!(period_for(KEEPS_UP, ADAPTIVE), Duration::ZERO);
        assert_eq!(
            period_for(Duration::from_millis(40), ADAPTIVE),
            Duration::from_millis(200)
        );
        assert_eq!(period_for(Duration::from_millis(500), ADAPTIVE), CEILING);
        assert_eq!(period_for(Duration::MAX, ADAPTIVE), CEILING);
        assert_eq!(
            period_for(
                Duration::MAX,
                Periods {
                    least: Duration::ZERO,
                    most: Duration::ZERO
                }
            ),
            Duration::ZERO
        );
        // The least period holds while the apiserver keeps up, and the rule takes over
        // once it asks for more.
        let floor = Periods {
            least: Duration::from_millis(500),
            most: Duration::from_secs(2),
        };
        assert_eq!(
            period_for(Duration::ZERO, floor),
            Duration::from_millis(500)
        );
        assert_eq!(period_for(Duration::from_millis(120), floor), CEILING);
        assert_eq!(period_for(Duration::MAX, floor), Duration::from_secs(2));
    }

    #[test]
    fn counters_are_written_at_once_while_the_apiserver_keeps_up() {
        let batcher = StatusBatcher::new(ADAPTIVE, Duration::from_secs(1), steady(KEEPS_UP));
        let t0 = Instant::now();
        batcher.written("a", t0);
        assert_eq!(batcher.hold("a", Urgency::Counters, t0), None);
    }

    #[test]
    fn counters_wait_for_the_period_after_a_write_and_not_after_a_quiet_spell() {
        let load = steady(Duration::from_millis(40));
        let batcher = StatusBatcher::new(ADAPTIVE, Duration::from_secs(1), load);
        let t0 = Instant::now();
        let period = batcher.period(t0);
        assert_eq!(period, Duration::from_millis(200));
        assert_eq!(batcher.hold("a", Urgency::Counters, t0), None);
        batcher.written("a", t0);
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(
            batcher.hold("a", Urgency::Counters, t1),
            Some(Duration::from_millis(150))
        );
        assert_eq!(batcher.hold("a", Urgency::Now, t1), None);
        assert_eq!(batcher.hold("a", Urgency::Counters, t0 + period), None);
        // Another Job is not held by this one's writes.
        assert_eq!(batcher.hold("b", Urgency::Counters, t1), None);
    }

    #[test]
    fn tokens_are_short_while_requests_wait_for_them_and_not_after() {
        let load = Arc::new(ApiLoad::default());
        let batcher = StatusBatcher::new(ADAPTIVE, Duration::from_secs(1), load.clone());
        let t0 = Instant::now();
        assert!(!batcher.tokens_short(t0), "nothing measured");
        // A slow answer alone is not a token shortage.
        load.answered(Duration::from_millis(300), t0);
        assert!(!batcher.tokens_short(t0));
        load.token_waited(Duration::from_millis(300), t0);
        assert!(batcher.tokens_short(t0));
        assert!(!batcher.tokens_short(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn the_period_shrinks_back_once_the_load_is_gone() {
        let load = Arc::new(ApiLoad::default());
        let batcher = StatusBatcher::new(ADAPTIVE, Duration::from_secs(1), load.clone());
        let t0 = Instant::now();
        load.token_waited(Duration::from_millis(300), t0);
        assert_eq!(batcher.period(t0), CEILING);
        batcher.written("a", t0);
        assert_eq!(batcher.hold("a", Urgency::Counters, t0), Some(CEILING));
        let quiet = t0 + Duration::from_secs(5);
        assert_eq!(batcher.period(quiet), Duration::ZERO);
        batcher.written("a", quiet);
        assert_eq!(batcher.hold("a", Urgency::Counters, quiet), None);
    }

    #[test]
    fn gauges_wait_from_when_they_were_first_seen_until_a_write() {
        let load = steady(Duration::from_millis(40));
        let batcher = StatusBatcher::new(ADAPTIVE, Duration::from_secs(1), load);
        let t0 = Instant::now();
        batcher.written("a", t0);
        let seen = t0 + Duration::from_millis(100);
        assert_eq!(
            batcher.hold("a", Urgency::Gauges, seen),
            Some(Duration::from_secs(1))
        );
        // Seen again later: still due one gauge delay after the first sighting.
        assert_eq!(
            batcher.hold("a", Urgency::Gauges, seen + Duration::from_millis(600)),
            Some(Duration::from_millis(400))
        );
        assert_eq!(
            batcher.hold("a", Urgency::Gauges, seen + Duration::from_secs(1)),
            None
        );
        // A write starts the wait afresh.
        batcher.written("a", seen + Duration::from_secs(1));
        let later = seen + Duration::from_secs(5);
        assert_eq!(
            batcher.hold("a", Urgency::Gauges, later),
            Some(Duration::from_secs(1))
        );
        batcher.forget("a");
        assert!(batcher.jobs.lock().unwrap().is_empty());
    }

    #[test]
    fn zero_periods_never_hold() {
        let load = steady(Duration::from_secs(10));
        let batcher = StatusBatcher::new(
            Periods {
                least: Duration::ZERO,
                most: Duration::ZERO,
            },
            Duration::ZERO,
            load,
        );
        let t0 = Instant::now();
        batcher.written("a", t0);
        assert_eq!(batcher.hold("a", Urgency::Counters, t0), None);
        assert_eq!(batcher.hold("a", Urgency::Gauges, t0), None);
    }
}
