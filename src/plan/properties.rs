//! Property tests of the planner: random Jobs (both completion modes, every policy, values
//! at the API's limits), random pods (any phase, finalizer, deletion, index, timestamps
//! from year -9999 to 9999) and clocks, with existing statuses. Whatever the snapshot, a
//! plan never panics, never lowers `succeeded` or `failed`, writes only statuses the
//! apiserver accepts ([`validation_errors`]), never runs more pods than parallelism allows,
//! and never lets a finished pod go uncounted.

use std::collections::HashSet;

use k8s_openapi::api::batch::v1::{
    Job, JobStatus, SuccessPolicy, SuccessPolicyRule, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::indexed::Intervals;
use super::status::*;
use super::testing::*;
use super::*;

/// Cases per property; the two properties below run 10,000 snapshots in all.
const CASES: u32 = 5_000;

fn config() -> Config {
    Config {
        cases: CASES,
        // No regression files in the source tree: a failure prints its minimal case.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Times from the earliest to the latest a Kubernetes timestamp can hold, and around the
/// test clock.
fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        4 => (-2000i64..2000).prop_map(t),
        1 => Just(Timestamp::MIN),
        1 => Just(Timestamp::MAX),
        1 => Just(t(-1_700_000_000)),
    ]
}

fn count() -> impl Strategy<Value = i32> {
    prop_oneof![
        12 => 0i32..6,
        1 => Just(100_000),
        1 => Just(1_000_000_000),
        1 => Just(i32::MAX),
    ]
}

/// Index annotations as pods may carry them, tampered ones included.
fn index_annotation() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        8 => (0i32..6).prop_map(|i| Some(i.to_string())),
        1 => prop::sample::select(vec!["-1", "x", "", "2147483647", "2147483648", "1e3", " 2"])
            .prop_map(|s| Some(s.to_string())),
        1 => Just(Some(i32::MAX.to_string())),
    ]
}

/// What a finished pod's container said.
#[derive(Debug, Clone)]
struct Exit {
    code: i32,
    finished: Timestamp,
}

#[derive(Debug, Clone, Default)]
struct PodSeed {
    phase: &'static str,
    finalizer: bool,
    /// The controller removed the finalizer already; the cache may not show it.
    finalizer_removed: bool,
    /// Being deleted, with this deletionGracePeriodSeconds.
    deleting: Option<Option<i64>>,
    index: Option<String>,
    failure_count: Option<String>,
    ready: Option<Timestamp>,
    disruption: bool,
    exit: Option<Exit>,
    restarts: i32,
    created: Timestamp,
    /// Listed in the status's uncounted lists: 0 no, 1 succeeded, 2 failed.
    listed: u8,
}

fn pod_seed() -> impl Strategy<Value = PodSeed> {
    let phase = prop::sample::select(vec!["Pending", "Running", "Succeeded", "Failed", "Unknown"]);
    let grace = prop_oneof![
        Just(None),
        Just(Some(0)),
        Just(Some(30)),
        Just(Some(i64::MAX)),
        Just(Some(i64::MAX / 2))
    ];
    let exit = prop::option::of(
        (prop::sample::select(vec![0, 1, 2, 42, 137]), timestamp())
            .prop_map(|(code, finished)| Exit { code, finished }),
    );
    let failure_count = prop::option::of(prop::sample::select(vec![
        "0",
        "1",
        "3",
        "2147483647",
        "-1",
        "x",
    ]))
    .prop_map(|s| s.map(String::from));
    (
        (phase, any::<bool>(), prop::bool::weighted(0.1)),
        (
            prop::option::weighted(0.2, grace),
            index_annotation(),
            failure_count,
        ),
        (
            prop::option::of(timestamp()),
            prop::bool::weighted(0.2),
            exit,
        ),
        (
            prop_oneof![Just(0), Just(3), Just(i32::MAX)],
            timestamp(),
            0u8..3,
        ),
    )
        .prop_map(
            |(
                (phase, finalizer, finalizer_removed),
                (deleting, index, failure_count),
                (ready, disruption, exit),
                (restarts, created, listed),
            )| PodSeed {
                phase,
                finalizer,
                finalizer_removed,
                deleting,
                index,
                failure_count,
                ready,
                disruption,
                exit,
                restarts,
                created,
                listed,
            },
        )
}

fn build_pod(n: usize, seed: &PodSeed) -> Pod {
    let name = format!("p{n}");
    let mut p = pod(&name, seed.phase);
    if let Some(index) = &seed.index {
        p = p.annotation(pods::COMPLETION_INDEX, index);
    }
    if let Some(count) = &seed.failure_count {
        p = p.annotation(pods::INDEX_FAILURE_COUNT, count);
    }
    if let Some(at) = seed.ready {
        p = p.cond("Ready", "True", at);
    }
    if seed.disruption {
        p = p.cond("DisruptionTarget", "True", t(0));
    }
    if seed.restarts > 0 {
        p = p.restarts(seed.restarts);
    }
    if let Some(exit) = &seed.exit {
        p = p.exit("main", exit.code, 0);
        let statuses =
            p.0.status
                .as_mut()
                .and_then(|s| s.container_statuses.as_mut());
        if let Some(terminated) = statuses
            .and_then(|cs| cs.last_mut())
            .and_then(|c| c.state.as_mut())
            .and_then(|s| s.terminated.as_mut())
        {
            terminated.finished_at = Some(Time(exit.finished));
        }
    }
    if !seed.finalizer {
        p = p.no_finalizer();
    }
    if let Some(grace) = seed.deleting {
        p = p.deleting();
        p.0.metadata.deletion_grace_period_seconds = grace;
    }
    p.0.metadata.creation_timestamp = Some(Time(seed.created));
    p.0
}

#[derive(Debug, Clone)]
struct JobSeed {
    indexed: bool,
    completions: Option<i32>,
    parallelism: i32,
    suspend: bool,
    backoff_limit: Option<i32>,
    backoff_limit_per_index: Option<i32>,
    max_failed_indexes: Option<i32>,
    /// 0 none; 1 FailJob on exit 42; 2 Ignore disruptions, Count the rest; 3 FailIndex on 1.
    failure_policy: u8,
    success_policy: Option<(Option<&'static str>, Option<i32>)>,
    active_deadline_seconds: Option<i64>,
    pod_replacement_policy: Option<&'static str>,
    deleting: bool,
}

fn job_seed() -> impl Strategy<Value = JobSeed> {
    let completions = prop::option::of(count());
    let limit = prop::option::of(prop_oneof![Just(0), Just(1), Just(3), Just(i32::MAX)]);
    let success_policy = prop::option::weighted(
        0.3,
        (
            prop::option::of(prop::sample::select(vec!["0", "1-3", "0,2", "2-100", "5"])),
            prop::option::of(prop_oneof![Just(0), Just(1), Just(2)]),
        ),
    );
    let deadline = prop::option::weighted(
        0.3,
        prop_oneof![Just(1i64), Just(100), Just(i64::MAX), Just(i64::MAX / 2)],
    );
    let replacement = prop::option::of(prop::sample::select(vec!["Failed", "TerminatingOrFailed"]));
    (
        (
            any::<bool>(),
            completions,
            count(),
            prop::bool::weighted(0.2),
        ),
        (limit.clone(), limit, prop::option::of(count())),
        (0u8..4, success_policy, deadline, replacement),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(
                (indexed, completions, parallelism, suspend),
                (backoff_limit, per_index, max_failed_indexes),
                (failure_policy, success_policy, active_deadline_seconds, replacement),
                deleting,
            )| {
                // The API's rules for a Job that exists: Indexed needs completions; the
                // per-index fields, FailIndex and successPolicy exist only for Indexed Jobs;
                // a podFailurePolicy needs podReplacementPolicy Failed (or none).
                let completions = if indexed {
                    Some(completions.unwrap_or(3))
                } else {
                    completions
                };
                let backoff_limit_per_index = per_index.filter(|_| indexed);
                let failure_policy = match failure_policy {
                    3 if backoff_limit_per_index.is_none() => 2,
                    other => other,
                };
                JobSeed {
                    indexed,
                    completions,
                    parallelism,
                    suspend,
                    backoff_limit,
                    backoff_limit_per_index,
                    max_failed_indexes: max_failed_indexes
                        .filter(|_| backoff_limit_per_index.is_some()),
                    failure_policy,
                    success_policy: success_policy
                        .filter(|(i, c)| indexed && (i.is_some() || c.is_some())),
                    active_deadline_seconds,
                    pod_replacement_policy: if failure_policy > 0 {
                        replacement.map(|_| "Failed")
                    } else {
                        replacement
                    },
                    deleting,
                }
            },
        )
}

fn build_job(seed: &JobSeed) -> Job {
    let mut j = match (seed.indexed, seed.completions) {
        (true, Some(c)) => indexed_job(c, seed.parallelism),
        (_, completions) => job(completions, seed.parallelism),
    };
    let s = spec(&mut j);
    s.suspend = Some(seed.suspend);
    s.backoff_limit = seed.backoff_limit;
    s.backoff_limit_per_index = seed.backoff_limit_per_index;
    s.max_failed_indexes = seed.max_failed_indexes;
    s.active_deadline_seconds = seed.active_deadline_seconds;
    s.pod_replacement_policy = seed.pod_replacement_policy.map(String::from);
    s.success_policy = seed.success_policy.map(|(indexes, count)| SuccessPolicy {
        rules: vec![SuccessPolicyRule {
            succeeded_indexes: indexes.map(String::from),
            succeeded_count: count,
        }],
    });
    let rules = match seed.failure_policy {
        1 => vec![exit_rule("FailJob", "In", &[42], None)],
        2 => vec![
            condition_rule("Ignore", "DisruptionTarget"),
            exit_rule("Count", "NotIn", &[0], None),
        ],
        3 => vec![exit_rule("FailIndex", "In", &[1], None)],
        _ => vec![],
    };
    if !rules.is_empty() {
        j = with_policy(j, rules);
    }
    if seed.deleting {
        j.metadata.deletion_timestamp = Some(Time(t(950)));
    }
    j
}

#[derive(Debug, Clone)]
struct StatusSeed {
    start_time: Option<Timestamp>,
    active: i32,
    ready: i32,
    terminating: i32,
    succeeded: i32,
    failed: i32,
    /// Per index below 6: 0 nothing, 1 completed, 2 failed.
    index_states: Vec<u8>,
    /// A garbage tail for completedIndexes (another writer's, or older).
    garbage: Option<&'static str>,
    /// 0 none, 1 Suspended, 2 resumed (Suspended False), 3 FailureTarget, 4 SuccessCriteriaMet,
    /// 5 Complete, 6 Failed.
    conditions: u8,
    bogus_uncounted: bool,
}

fn status_seed() -> impl Strategy<Value = StatusSeed> {
    (
        (prop::option::of(timestamp()), 0i32..6, 0i32..6, 0i32..3),
        (count(), count()),
        (
            prop::collection::vec(0u8..3, 0..6),
            prop::option::weighted(
                0.2,
                prop::sample::select(vec!["5-3", "x", "0-2147483646", "2147483647", ",", "1--2"]),
            ),
        ),
        (
            prop_oneof![4 => Just(0u8), 6 => 1u8..7],
            prop::bool::weighted(0.2),
        ),
    )
        .prop_map(
            |(
                (start_time, active, ready, terminating),
                (succeeded, failed),
                (index_states, garbage),
                (conditions, bogus_uncounted),
            )| StatusSeed {
                start_time,
                active,
                ready,
                terminating,
                succeeded,
                failed,
                index_states,
                garbage,
                conditions,
                bogus_uncounted,
            },
        )
}

/// A status the apiserver could hold for this Job: the counters and lists as the seed
/// says, Indexed `succeeded` matching `completedIndexes`, conditions in a combination the
/// validation allows.
fn build_status(j: &Job, seed: &StatusSeed, pods: &[(PodSeed, Pod)]) -> JobStatus {
    let job_spec = j.spec.as_ref().unwrap();
    let completions = job_spec.completions.unwrap_or(0);
    let indexed = job_spec.completion_mode.as_deref() == Some("Indexed");
    let state_of = |wanted: u8| -> Vec<i32> {
        (0..)
            .zip(&seed.index_states)
            .filter(|&(i, s)| *s == wanted && i < completions)
            .map(|(i, _)| i)
            .collect()
    };
    let mut completed = Intervals::from_indexes(&state_of(1)).to_string();
    // The apiserver keeps failedIndexes and completedIndexes apart: garbage only where
    // there are no failed indexes.
    if let Some(garbage) = seed
        .garbage
        .filter(|_| job_spec.backoff_limit_per_index.is_none())
    {
        completed = if completed.is_empty() {
            garbage.to_string()
        } else {
            format!("{completed},{garbage}")
        };
    }
    let failed_indexes = Intervals::from_indexes(&state_of(2)).to_string();
    let listed = |which: u8| -> Option<Vec<String>> {
        let mut uids: Vec<String> = pods
            .iter()
            .filter(|(s, _)| s.listed == which)
            .map(|(_, p)| pods::uid(p).to_string())
            .collect();
        if seed.bogus_uncounted && which == 2 {
            uids.push("gone-uid".into());
        }
        Some(uids)
    };
    let mut status = JobStatus {
        start_time: seed.start_time.map(Time),
        active: Some(seed.active),
        ready: Some(seed.ready),
        terminating: Some(seed.terminating),
        succeeded: Some(seed.succeeded),
        failed: Some(seed.failed),
        uncounted_terminated_pods: Some(UncountedTerminatedPods {
            succeeded: listed(1),
            failed: listed(2),
        }),
        ..Default::default()
    };
    if indexed {
        status.succeeded = Some(Intervals::parse(&completed, completions).total());
        status.completed_indexes = Some(completed);
        if job_spec.backoff_limit_per_index.is_some() {
            status.failed_indexes = Some(failed_indexes);
        }
    }
    let conditions = match seed.conditions {
        1 => vec![new_condition(
            SUSPENDED,
            "True",
            "JobSuspended",
            "Job suspended",
            t(0),
        )],
        2 => vec![new_condition(
            SUSPENDED,
            "False",
            "JobResumed",
            "Job resumed",
            t(0),
        )],
        3 => vec![cond(
            FAILURE_TARGET,
            REASON_BACKOFF_LIMIT,
            MESSAGE_BACKOFF_LIMIT,
        )],
        4 => vec![cond(SUCCESS_CRITERIA_MET, REASON_COMPLETIONS_REACHED, "")],
        5 => {
            status.completion_time = Some(Time(t(1)));
            status.start_time = Some(Time(t(0)));
            vec![
                cond(SUCCESS_CRITERIA_MET, REASON_COMPLETIONS_REACHED, ""),
                cond(COMPLETE, REASON_COMPLETIONS_REACHED, ""),
            ]
        }
        6 => vec![
            cond(FAILURE_TARGET, REASON_BACKOFF_LIMIT, MESSAGE_BACKOFF_LIMIT),
            cond(FAILED, REASON_BACKOFF_LIMIT, MESSAGE_BACKOFF_LIMIT),
        ],
        _ => vec![],
    };
    status.conditions = Some(conditions);
    status
}

struct Case {
    seeds: (JobSeed, StatusSeed),
    job: Job,
    pods: Vec<(PodSeed, Pod)>,
    removed: HashSet<String>,
    backoff: BackoffRecord,
    now: Timestamp,
    /// Pods created by applied plans so far (their names).
    created: usize,
}

fn case() -> impl Strategy<Value = Case> {
    let backoff = (
        0u32..8,
        prop::option::of(timestamp()),
        prop::option::of(timestamp()),
    )
        .prop_map(
            |(failures_after_last_success, last_failure_time, last_success_time)| BackoffRecord {
                failures_after_last_success,
                last_failure_time,
                last_success_time,
            },
        );
    let clock = prop_oneof![
        8 => (900i64..1100).prop_map(t),
        1 => Just(Timestamp::MIN),
        1 => Just(Timestamp::MAX),
    ];
    (
        job_seed(),
        prop::collection::vec(pod_seed(), 0..8),
        status_seed(),
        backoff,
        clock,
    )
        .prop_map(|(job_seed, pod_seeds, status_seed, backoff, now)| {
            let mut job = build_job(&job_seed);
            let pods: Vec<(PodSeed, Pod)> = pod_seeds
                .into_iter()
                .enumerate()
                .map(|(n, s)| {
                    let p = build_pod(n, &s);
                    (s, p)
                })
                .collect();
            job.status = Some(build_status(&job, &status_seed, &pods));
            let removed = pods
                .iter()
                .filter(|(s, _)| s.finalizer_removed)
                .map(|(_, p)| pods::uid(p).to_string())
                .collect();
            Case {
                seeds: (job_seed, status_seed),
                job,
                pods,
                removed,
                backoff,
                now,
                created: 0,
            }
        })
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("seeds", &self.seeds)
            .field(
                "pods",
                &self.pods.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .field("removed", &self.removed)
            .field("backoff", &self.backoff)
            .field("now", &self.now)
            .finish()
    }
}

fn plan_case(c: &Case) -> Plan {
    let snapshot = Snapshot {
        job: &c.job,
        pods: c.pods.iter().map(|(_, p)| p).collect(),
        orphans: vec![],
        finalizer_removed: &c.removed,
        backoff: &c.backoff,
        now: c.now,
    };
    plan(&snapshot)
}

fn only_replace_failed(j: &Job) -> bool {
    let s = j.spec.as_ref().unwrap();
    match s.pod_replacement_policy.as_deref() {
        Some(policy) => policy == "Failed",
        None => s.pod_failure_policy.is_some(),
    }
}

/// Whether the pod still holds the tracking finalizer as the planner sees it.
fn tracked(c: &Case, p: &Pod) -> bool {
    pods::has_tracking_finalizer(p) && !c.removed.contains(pods::uid(p))
}

fn is_finished(c: &Case, p: &Pod) -> bool {
    pods::is_succeeded(p) || pods::is_failed(p, only_replace_failed(&c.job))
}

/// Whether the pod counts at all: in an Indexed Job only with an index below completions.
fn countable(c: &Case, p: &Pod) -> bool {
    let s = c.job.spec.as_ref().unwrap();
    s.completion_mode.as_deref() != Some("Indexed")
        || pods::completion_index(p).is_some_and(|i| i < s.completions.unwrap_or(0))
}

fn check_plan(c: &Case, p: &Plan) -> Result<(), TestCaseError> {
    let old = c.job.status.clone().unwrap_or_default();
    let new = status_after(&c.job, p);
    if let Some(written) = &p.status {
        let errors = validation_errors(&c.job, written);
        prop_assert!(
            errors.is_empty(),
            "status rejected: {errors:?}\n{written:#?}"
        );
    }
    prop_assert!(
        new.succeeded.unwrap_or(0) >= old.succeeded.unwrap_or(0),
        "succeeded fell"
    );
    prop_assert!(
        new.failed.unwrap_or(0) >= old.failed.unwrap_or(0),
        "failed fell"
    );
    if finished(&old).is_some() {
        // A finished Job only loses its finalizers.
        prop_assert!(p.delete.is_empty() && p.create.is_empty() && p.status.is_none());
        return Ok(());
    }
    check_pod_counts(c, p, &new)?;
    check_nothing_lost(c, p, &new)
}

/// Pods running after the plan: no more than parallelism, unless there were more before
/// and the plan may not delete them yet; `status.active` says how many.
fn check_pod_counts(c: &Case, p: &Plan, new: &JobStatus) -> Result<(), TestCaseError> {
    let deleted: HashSet<&str> = p.delete.iter().map(|r| r.uid.as_str()).collect();
    let active_before = c.pods.iter().filter(|(_, x)| pods::is_active(x)).count();
    let active_after = active_before.saturating_sub(deleted.len()) + p.create.len();
    let parallelism =
        usize::try_from(c.job.spec.as_ref().unwrap().parallelism.unwrap_or(1)).unwrap_or(0);
    prop_assert!(
        active_after <= parallelism.max(active_before),
        "{active_after} active after the plan, parallelism {parallelism}"
    );
    if !p.create.is_empty() {
        prop_assert!(active_after <= parallelism, "created past parallelism");
    }
    prop_assert_eq!(new.active.unwrap_or(0), classify::count(active_after));
    for (_, pod) in &c.pods {
        if deleted.contains(pods::uid(pod)) {
            prop_assert!(pods::is_active(pod), "deleted a pod that is not active");
        }
    }
    Ok(())
}

/// A finished pod whose finalizer goes is counted: listed in uncountedTerminatedPods (an
/// Indexed success: its index in completedIndexes). A pod deleted while the Job fails is
/// one whose failure is already recorded, or that does not count.
fn check_nothing_lost(c: &Case, p: &Plan, new: &JobStatus) -> Result<(), TestCaseError> {
    let (us, uf) = uncounted(new);
    let listed: HashSet<&str> = us.iter().chain(&uf).map(String::as_str).collect();
    let (old_us, old_uf) = uncounted(c.job.status.as_ref().unwrap());
    let was_listed: HashSet<&str> = old_us.iter().chain(&old_uf).map(String::as_str).collect();
    let job_spec = c.job.spec.as_ref().unwrap();
    let completions = job_spec.completions.unwrap_or(0);
    let completed = Intervals::parse(new.completed_indexes.as_deref().unwrap_or(""), completions);
    let policy = job_spec.pod_failure_policy.as_ref();
    let removing: HashSet<&str> = p.remove_finalizers.iter().map(|r| r.uid.as_str()).collect();
    for (_, pod) in &c.pods {
        let uid = pods::uid(pod);
        if !removing.contains(uid) || !tracked(c, pod) || !countable(c, pod) {
            continue;
        }
        let indexed_success = job_spec.completion_mode.as_deref() == Some("Indexed")
            && pods::is_succeeded(pod)
            && !was_listed.contains(uid);
        if indexed_success {
            // Completed, or failed already (an index does not fail and succeed).
            let index = pods::completion_index(pod).unwrap_or(-1);
            let failed = Intervals::parse(new.failed_indexes.as_deref().unwrap_or(""), completions);
            prop_assert!(
                completed.has(index) || failed.has(index),
                "index {index} of {uid} not recorded"
            );
        } else if is_finished(c, pod) && failure_policy::match_pod(policy, pod).counts {
            prop_assert!(listed.contains(uid), "{uid} loses its finalizer uncounted");
        }
    }
    let failing = is_true(conditions(new), FAILURE_TARGET);
    for r in &p.delete {
        let Some((_, pod)) = c.pods.iter().find(|(_, x)| pods::uid(x) == r.uid) else {
            continue;
        };
        let counts = failure_policy::match_pod(policy, pod).counts;
        if failing && tracked(c, pod) && countable(c, pod) && counts {
            prop_assert!(
                was_listed.contains(r.uid.as_str()),
                "{} deleted uncounted",
                r.name
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// One plan from any snapshot.
    #[test]
    fn any_snapshot_plans_a_valid_step(c in case()) {
        let p = plan_case(&c);
        check_plan(&c, &p)?;
        let again = plan_case(&c);
        prop_assert_eq!(
            (&p.status, &p.delete, &p.remove_finalizers, &p.events, p.create.len()),
            (&again.status, &again.delete, &again.remove_finalizers, &again.events, again.create.len()),
            "not deterministic"
        );
    }

    /// A few plans in a row, each applied (partly, as a failed write would leave it) and
    /// its pods moved on: the checks hold at every step.
    #[test]
    fn plans_applied_in_turn_stay_valid(
        c in case(),
        steps in prop::collection::vec((1usize..5, prop::sample::select(vec!["Running", "Succeeded", "Failed"])), 1..5),
    ) {
        let mut c = c;
        for (applied, phase) in steps {
            let p = plan_case(&c);
            check_plan(&c, &p)?;
            apply(&mut c, &p, applied, phase);
        }
    }
}

/// Applies the first `steps` steps of a plan as the executor does (delete, create, status,
/// finalizers), then moves every running or new pod to `phase`.
fn apply(c: &mut Case, p: &Plan, steps: usize, phase: &str) {
    let uids =
        |refs: &[PodRef]| -> HashSet<String> { refs.iter().map(|r| r.uid.clone()).collect() };
    let (deleted, unfinalized) = (uids(&p.delete), uids(&p.remove_finalizers));
    for (_, pod) in &mut c.pods {
        if steps >= 1 && deleted.contains(pods::uid(pod)) {
            pod.metadata.finalizers = None;
            pod.metadata.deletion_timestamp = Some(Time(c.now));
        }
    }
    if steps >= 2 {
        // The rest of a big burst is not in the cache yet (the plans stay small).
        for new in p.create.iter().take(20) {
            c.created += 1;
            let mut new = new.build(&c.job);
            let name = format!("new{}", c.created);
            new.metadata.uid = Some(format!("{name}-uid"));
            new.metadata.name = Some(name);
            new.metadata.creation_timestamp = Some(Time(c.now));
            new.status = Some(Default::default());
            c.pods.push((PodSeed::default(), new));
        }
    }
    if steps >= 3 {
        if let Some(s) = &p.status {
            c.job.status = Some(s.clone());
        }
        c.backoff = p.backoff.clone();
    }
    if steps >= 4 {
        for (_, pod) in &mut c.pods {
            if unfinalized.contains(pods::uid(pod)) {
                pod.metadata.finalizers = None;
            }
        }
    }
    // Gone: deleted pods without finalizers.
    c.pods
        .retain(|(_, pod)| !pods::is_deleting(pod) || pods::has_tracking_finalizer(pod));
    for (_, pod) in &mut c.pods {
        if pods::is_active(pod) {
            pod.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        }
    }
}
