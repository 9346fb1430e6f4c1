//! One candidate for the leader Lease (coordination.k8s.io/v1), the way client-go's
//! leaderelection package keeps one: GET the Lease, then create it, or replace it with the
//! resourceVersion just read, so two candidates can never both win one round.
//!
//! Expiry is judged on this process's own monotonic clock, never by comparing the Lease's
//! timestamps with the local wall clock (clocks of two nodes differ): a holder's lease
//! counts as expired `leaseDurationSeconds` after this candidate *saw* the Lease last
//! change. The holder itself stops leading `renew_deadline` after the start of its last
//! successful renewal, which is before anyone else can have seen that renewal, so before
//! anyone can count its lease expired.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::info;

/// client-go's three leader-election durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Timing {
    /// How long past its expiry a lease held by this process's previous incarnation is left
    /// alone. A standby notices a change at most one retry period after it happened and
    /// tries again at most one retry period after expiry; the third covers request latency.
    /// So the standby, which contends at expiry, gets the Lease first.
    pub fn previous_incarnation_margin(&self) -> Duration {
        self.retry_period.saturating_mul(3)
    }

    /// Deadline of one Lease request: client-go's `NewFromKubeconfig` gives the lock's
    /// client half the renew deadline (at least a second), so one hung request leaves time
    /// for another try.
    pub fn request_timeout(&self) -> Duration {
        (self.renew_deadline / 2).max(Duration::from_secs(1))
    }
}

/// The Lease fields whose change shows the holder is alive (client-go compares the whole
/// leader election record).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub holder: Option<String>,
    pub renew_time: Option<Timestamp>,
    pub acquire_time: Option<Timestamp>,
    pub lease_duration_seconds: Option<i32>,
    pub transitions: Option<i32>,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.as_ref();
        Record {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            acquire_time: spec.and_then(|s| s.acquire_time.as_ref()).map(|t| t.0),
            lease_duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
            transitions: spec.and_then(|s| s.lease_transitions),
        }
    }
}

/// What a candidate does with the Lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or its holder's lease has expired in our eyes: take it.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds it, in our eyes until `until`.
    Wait { holder: String, until: Instant },
    /// Our own previous incarnation (a container restarted after a SIGKILL) holds it: wait
    /// past its expiry, so that a standby replica takes over first.
    WaitForStandby { holder: String, until: Instant },
}

/// Who this candidate is.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// `<name>_<random>`, unique per process.
    pub identity: String,
    /// The `<name>` part, when it is the pod's name (in-cluster): a holder `<name>_<other>`
    /// is then this pod's previous container.
    pub pod_name: Option<String>,
}

impl Candidate {
    fn is_previous_incarnation(&self, holder: &str) -> bool {
        let Some(pod) = &self.pod_name else {
            return false;
        };
        holder != self.identity
            && holder
                .strip_prefix(pod.as_str())
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|suffix| !suffix.is_empty() && !suffix.contains('_'))
    }
}

/// The decision on a Lease `record` that this candidate first saw as it is at `observed_at`.
pub fn decide(
    candidate: &Candidate,
    timing: &Timing,
    record: &Record,
    observed_at: Instant,
    now: Instant,
) -> Decision {
    let Some(holder) = record.holder.clone() else {
        return Decision::Acquire;
    };
    if holder == candidate.identity {
        return Decision::Renew;
    }
    let lease = record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(timing.lease_duration);
    let expires = observed_at + lease;
    if candidate.is_previous_incarnation(&holder) {
        let until = expires + timing.previous_incarnation_margin();
        if now < until {
            return Decision::WaitForStandby { holder, until };
        }
        return Decision::Acquire;
    }
    if now < expires {
        return Decision::Wait {
            holder,
            until: expires,
        };
    }
    Decision::Acquire
}

/// What one round of [`Elector::try_acquire_or_renew`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// We hold the Lease (acquired or renewed it).
    Held,
    /// Someone else holds it.
    HeldBy(String),
    /// Another candidate wrote the Lease between our read and our write.
    Conflict,
}

/// The Lease as one candidate sees it.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    candidate: Candidate,
    timing: Timing,
    /// The Lease as last read (or written), and when this candidate saw it so.
    observed: Option<(Record, Instant)>,
    /// The last wait decision logged, so a standby logs a holder once, not every round.
    logged: Option<Decision>,
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        candidate: Candidate,
        timing: Timing,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            candidate,
            timing,
            observed: None,
            logged: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.candidate.identity
    }

    /// client-go's `tryAcquireOrRenew`: one GET, then at most one create or replace.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Round, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return self.create().await;
        };
        let record = Record::of(&lease);
        let now = Instant::now();
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => now,
        };
        self.observed = Some((record.clone(), observed_at));
        let decision = decide(&self.candidate, &self.timing, &record, observed_at, now);
        match decision {
            Decision::Acquire | Decision::Renew => self.write(lease, &record).await,
            Decision::Wait { ref holder, .. } => {
                let holder = holder.clone();
                self.log_wait(decision);
                Ok(Round::HeldBy(holder))
            }
            Decision::WaitForStandby { ref holder, .. } => {
                let holder = holder.clone();
                self.log_wait(decision);
                Ok(Round::HeldBy(holder))
            }
        }
    }

    /// Gives the Lease up if we still hold it, so a standby takes over at its next look
    /// instead of at expiry (client-go's ReleaseOnCancel).
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        if Record::of(&lease).holder.as_deref() != Some(self.identity()) {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn create(&mut self) -> Result<Round, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity().to_string()),
                lease_duration_seconds: Some(self.lease_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                self.observed = Some((Record::of(&created), Instant::now()));
                Ok(Round::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Replaces the Lease read as `lease` (its resourceVersion guards the write) with us as
    /// its holder, renewed now.
    async fn write(&mut self, mut lease: Lease, record: &Record) -> Result<Round, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let ours = record.holder.as_deref() == Some(self.identity());
        let lease_seconds = self.lease_seconds();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(
                record
                    .transitions
                    .unwrap_or_default()
                    .saturating_add(i32::from(record.holder.is_some())),
            );
        }
        spec.holder_identity = Some(self.candidate.identity.clone());
        spec.lease_duration_seconds = Some(lease_seconds);
        spec.renew_time = Some(now);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observed = Some((Record::of(&written), Instant::now()));
                self.logged = None;
                Ok(Round::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Conflict),
            Err(e) => Err(e),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn log_wait(&mut self, decision: Decision) {
        let same_holder = match (&self.logged, &decision) {
            (Some(Decision::Wait { holder: a, .. }), Decision::Wait { holder: b, .. }) => a == b,
            (
                Some(Decision::WaitForStandby { holder: a, .. }),
                Decision::WaitForStandby { holder: b, .. },
            ) => a == b,
            _ => false,
        };
        if same_holder {
            return;
        }
        match &decision {
            Decision::WaitForStandby { holder, until } => info!(
                holder = %holder,
                wait_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
                "the Lease is held by this pod's previous container; not contending until it has \
                 expired and a standby replica had its chance"
            ),
            Decision::Wait { holder, .. } => {
                info!(holder = %holder, "the leader Lease is held; standing by")
            }
            _ => {}
        }
        self.logged = Some(decision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    fn candidate(pod_name: Option<&str>) -> Candidate {
        Candidate {
            identity: "jobkeeper-7d9f-x2k4q_0a1b2c3d".into(),
            pod_name: pod_name.map(Into::into),
        }
    }

    fn held_by(holder: &str) -> Record {
        Record {
            holder: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn a_free_lease_is_taken_and_our_own_is_renewed() {
        let now = Instant::now();
        let me = candidate(None);
        assert_eq!(
            decide(&me, &TIMING, &Record::default(), now, now),
            Decision::Acquire
        );
        assert_eq!(
            decide(&me, &TIMING, &held_by(&me.identity), now, now),
            Decision::Renew
        );
    }

    #[test]
    fn expiry_counts_from_when_we_saw_the_lease_change_not_from_its_timestamps() {
        let seen = Instant::now();
        let me = candidate(None);
        // A renewTime far in the past (the holder's clock is behind ours) does not make the
        // lease expired: we saw it change just now.
        let record = Record {
            renew_time: Some(Timestamp::UNIX_EPOCH),
            ..held_by("other_1")
        };
        let until = seen + Duration::from_secs(15);
        assert_eq!(
            decide(&me, &TIMING, &record, seen, seen + Duration::from_secs(14)),
            Decision::Wait {
                holder: "other_1".into(),
                until
            }
        );
        assert_eq!(
            decide(&me, &TIMING, &record, seen, until),
            Decision::Acquire
        );
    }

    #[test]
    fn the_lease_duration_comes_from_the_lease_else_from_our_flag() {
        let seen = Instant::now();
        let me = candidate(None);
        let short = Record {
            lease_duration_seconds: Some(1),
            ..held_by("other_1")
        };
        assert_eq!(
            decide(&me, &TIMING, &short, seen, seen + Duration::from_secs(1)),
            Decision::Acquire
        );
        let unset = Record {
            lease_duration_seconds: Some(-5),
            ..held_by("other_1")
        };
        assert!(matches!(
            decide(&me, &TIMING, &unset, seen, seen + Duration::from_secs(14)),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn a_restarted_container_leaves_its_old_lease_to_the_standby() {
        let seen = Instant::now();
        let me = candidate(Some("jobkeeper-7d9f-x2k4q"));
        let old_self = held_by("jobkeeper-7d9f-x2k4q_99999999");
        let expiry = seen + Duration::from_secs(15);
        let until = expiry + Duration::from_secs(6);
        // At expiry, when a standby contends, the restarted container still waits.
        assert_eq!(
            decide(&me, &TIMING, &old_self, seen, expiry),
            Decision::WaitForStandby {
                holder: "jobkeeper-7d9f-x2k4q_99999999".into(),
                until
            }
        );
        // Nobody took it: then the restarted container does.
        assert_eq!(
            decide(&me, &TIMING, &old_self, seen, until),
            Decision::Acquire
        );
        // A standby replica (another pod name) is not our previous incarnation.
        let standby = held_by("jobkeeper-7d9f-zz9pq_12345678");
        assert_eq!(
            decide(&me, &TIMING, &standby, seen, expiry),
            Decision::Acquire
        );
        // Nor is a pod whose name merely starts with ours.
        let longer = held_by("jobkeeper-7d9f-x2k4q-2_12345678");
        assert_eq!(
            decide(&me, &TIMING, &longer, seen, expiry),
            Decision::Acquire
        );
    }

    #[test]
    fn out_of_cluster_a_same_named_holder_is_just_another_candidate() {
        let seen = Instant::now();
        let me = candidate(None);
        let record = held_by("jobkeeper-7d9f-x2k4q_99999999");
        assert_eq!(
            decide(&me, &TIMING, &record, seen, seen + Duration::from_secs(15)),
            Decision::Acquire
        );
    }

    #[test]
    fn lease_requests_get_half_the_renew_deadline() {
        assert_eq!(TIMING.request_timeout(), Duration::from_secs(5));
        let tight = Timing {
            renew_deadline: Duration::from_millis(800),
            ..TIMING
        };
        assert_eq!(tight.request_timeout(), Duration::from_secs(1));
    }
}
