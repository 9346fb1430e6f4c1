//! How far behind the API server is, as one delay: what a request meets now, from the
//! moment a Job is triggered to the response of its write. Three measured parts, each a
//! time-weighted mean over about the last second:
//!
//! - **queue**: from a watch event that triggers a Job to the start of its sync (the work
//!   queue's depth in time: Jobs waiting for one of `--concurrency` workers);
//! - **token**: a request's wait for a token of `--kube-api-qps`/`--kube-api-burst` (the
//!   client's own queueing);
//! - **response**: from sending a request to its response (the apiserver's queueing and
//!   work; watches and events are left out).
//!
//! A part with no sample for a while decays towards zero: quiet means nothing waits.
//! [`crate::cluster::status_batch`] turns the delay into its batch period.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The time over which samples are averaged: a sample `TAU` old weighs 1/e of a new one.
const TAU: Duration = Duration::from_secs(1);

/// A mean of samples weighted by their age, decaying towards zero while none come.
#[derive(Debug, Default, Clone, Copy)]
struct Decaying {
    /// Seconds.
    mean: f64,
    at: Option<Instant>,
}

impl Decaying {
    /// The weight the past keeps after `elapsed`.
    fn kept(elapsed: Duration) -> f64 {
        (-elapsed.as_secs_f64() / TAU.as_secs_f64()).exp()
    }

    fn observe(&mut self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        self.mean = match self.at {
            None => sample,
            Some(at) => {
                // A burst of samples at one instant: each moves the mean by a fixed share.
                let kept = Self::kept(now.saturating_duration_since(at)).min(0.9);
                kept * self.mean + (1.0 - kept) * sample
            }
        };
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
    }

    fn read(&self, now: Instant) -> Duration {
        let Some(at) = self.at else {
            return Duration::ZERO;
        };
        let mean = self.mean * Self::kept(now.saturating_duration_since(at));
        Duration::try_from_secs_f64(mean).unwrap_or(Duration::ZERO)
    }
}

/// The three parts of the delay, as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delays {
    pub queue: Duration,
    pub token: Duration,
    pub response: Duration,
}

impl Delays {
    pub fn total(&self) -> Duration {
        self.queue
            .saturating_add(self.token)
            .saturating_add(self.response)
    }
}

/// Shared by the client (token and response) and the work queue (queue).
#[derive(Debug, Default)]
pub struct ApiLoad {
    parts: Mutex<[Decaying; 3]>,
}

const QUEUE: usize = 0;
const TOKEN: usize = 1;
const RESPONSE: usize = 2;

impl ApiLoad {
    fn observe(&self, part: usize, sample: Duration, now: Instant) {
        let mut parts = self.parts.lock().expect("api load lock");
        parts[part].observe(sample, now);
    }

    /// A Job waited `waited` from its trigger to the start of its sync.
    pub fn queued(&self, waited: Duration, now: Instant) {
        self.observe(QUEUE, waited, now);
    }

    /// A request waited `waited` for a token of the client's rate limit.
    pub fn token_waited(&self, waited: Duration, now: Instant) {
        self.observe(TOKEN, waited, now);
    }

    /// A request was answered `took` after it was sent.
    pub fn answered(&self, took: Duration, now: Instant) {
        self.observe(RESPONSE, took, now);
    }

    pub fn delays(&self, now: Instant) -> Delays {
        let parts = self.parts.lock().expect("api load lock");
        Delays {
            queue: parts[QUEUE].read(now),
            token: parts[TOKEN].read(now),
            response: parts[RESPONSE].read(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nothing_measured_is_no_delay() {
        let load = ApiLoad::default();
        assert_eq!(load.delays(Instant::now()), Delays::default());
    }

    #[test]
    fn the_parts_add_up_and_follow_their_samples() {
        let load = ApiLoad::default();
        let t0 = Instant::now();
        load.queued(100 * MS, t0);
        load.token_waited(30 * MS, t0);
        load.answered(5 * MS, t0);
        let d = load.delays(t0);
        assert_eq!((d.queue, d.token, d.response), (100 * MS, 30 * MS, 5 * MS));
        assert_eq!(d.total(), 135 * MS);
        // Slower answers for a second pull the mean most of the way to them.
        for i in 1..=100 {
            load.answered(200 * MS, t0 + i * 10 * MS);
        }
        let response = load.delays(t0 + Duration::from_secs(1)).response;
        assert!(response > 120 * MS && response <= 200 * MS, "{response:?}");
    }

    #[test]
    fn a_burst_at_one_instant_still_moves_the_mean() {
        let load = ApiLoad::default();
        let t0 = Instant::now();
        load.answered(MS, t0);
        for _ in 0..50 {
            load.answered(500 * MS, t0);
        }
        assert!(load.delays(t0).response > 490 * MS);
    }

    #[test]
    fn the_delay_fades_once_the_samples_stop() {
        let load = ApiLoad::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        load.token_waited(Duration::from_secs(2), t1);
        let later = load.delays(t1 + Duration::from_secs(5)).token;
        assert!(later < 20 * MS, "{later:?}");
        // A clock read before the last sample (another thread's) is not a panic.
        assert_eq!(load.delays(t0).token, Duration::from_secs(2));
    }
}
