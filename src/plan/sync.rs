//! One sync of one Job, in upstream's order: count what finished, decide whether the Job
//! is done (success criteria, failure target, backoff, deadline, per-index limits,
//! success policy), manage pods, then track finished pods through
//! `uncountedTerminatedPods` and add the terminal condition when nothing is left.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::failure_policy::{self, Action};
use super::indexed::{self, Intervals};
use super::pods::{self, pod_ref, uid};
use super::status::{self, *};
use super::template::{self, IndexFailureCounts};
use super::{BackoffRecord, EventType, JobEvent, Plan, PodRef, Snapshot, TRACKING_FINALIZER};
use super::{backoff, success_policy};

/// At most this many pod UIDs wait in `uncountedTerminatedPods` (keeps the status small).
pub const MAX_UNCOUNTED_PODS: usize = 500;
/// At most this many pod creates or deletes per plan.
pub const MAX_POD_CREATE_DELETE_PER_SYNC: usize = 500;

fn event(type_: EventType, reason: &str, message: &str) -> JobEvent {
    JobEvent {
        type_,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

fn requeue_at_most(plan: &mut Plan, after: Duration) {
    plan.requeue_after = Some(plan.requeue_after.map_or(after, |d| d.min(after)));
}

fn to_duration(d: SignedDuration) -> Duration {
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

pub fn plan(s: &Snapshot<'_>) -> Plan {
    let job = s.job;
    let now = s.now;
    let mut plan = Plan {
        backoff: s.backoff.clone(),
        ..Plan::default()
    };
    let Some(spec) = job.spec.as_ref() else {
        plan.outcome.rule = "the Job has no spec".to_string();
        return plan;
    };
    let current = job.status.clone().unwrap_or_default();
    let removed = s.finalizer_removed;

    if let Some(done) = status::finished(&current) {
        // A finished Job is not synced again; its pods only lose the tracking finalizer
        // (upstream's orphan cleanup), and the backoff record is dropped.
        plan.backoff = BackoffRecord::default();
        let mut refs: Vec<PodRef> = s
            .pods
            .iter()
            .filter(|p| pods::has_finalizer(p, TRACKING_FINALIZER) && !removed.contains(uid(p)))
            .map(|p| pod_ref(p))
            .collect();
        refs.sort();
        refs.dedup();
        if !refs.is_empty() {
            plan.decisions.push(format!(
                "removing the tracking finalizer from {} pods of the finished Job",
                refs.len()
            ));
        }
        plan.remove_finalizers = refs;
        plan.outcome.rule = format!(
            "the Job is finished ({}: {})",
            done.type_,
            done.reason.as_deref().unwrap_or("")
        );
        return plan;
    }
    match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") | Some("Indexed") => {}
        Some(_) => {
            plan.events.push(event(
                EventType::Warning,
                "UnknownCompletionMode",
                "Skipped Job sync because completion mode is unknown",
            ));
            plan.outcome.rule = "the completion mode is unknown; the Job is not synced".to_string();
            return plan;
        }
    }

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let completions_n = completions.unwrap_or(0);
    let per_index = if indexed {
        spec.backoff_limit_per_index
    } else {
        None
    };
    let backoff_limit =
        spec.backoff_limit
            .unwrap_or(if per_index.is_some() { i32::MAX } else { 6 });
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let only_replace_failed = match spec.pod_replacement_policy.as_deref() {
        Some("Failed") => true,
        Some(_) => false,
        None => spec.pod_failure_policy.is_some(),
    };
    let suspended = spec.suspend == Some(true);
    let policy = spec.pod_failure_policy.as_ref();
    let job_deleting = job.metadata.deletion_timestamp.is_some();

    // Claim pods: owned pods that stopped matching are released, matching orphans adopted.
    let selector = spec.selector.as_ref();
    let mut owned: Vec<&Pod> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::with_capacity(s.pods.len() + s.orphans.len());
    for &p in &s.pods {
        if !seen.insert(uid(p)) {
            continue;
        }
        if pods::selector_matches(selector, p.metadata.labels.as_ref()) {
            owned.push(p);
        } else if !job_deleting {
            plan.release.push(pod_ref(p));
        }
    }
    let mut adopted: HashSet<&str> = HashSet::new();
    if !job_deleting {
        for &p in &s.orphans {
            if !pods::is_deleting(p)
                && pods::selector_matches(selector, p.metadata.labels.as_ref())
                && seen.insert(uid(p))
            {
                plan.adopt.push(pod_ref(p));
                adopted.insert(uid(p));
                owned.push(p);
            }
        }
    }
    if !plan.adopt.is_empty() {
        plan.decisions.push(format!(
            "adopting {}",
            pods_word(plan.adopt.len(), "orphan pod")
        ));
    }
    if !plan.release.is_empty() {
        plan.decisions.push(format!(
            "releasing {} pods that no longer match the selector",
            plan.release.len()
        ));
    }
    owned.sort_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref(), &a.metadata.name)
            .cmp(&(b.metadata.creation_timestamp.as_ref(), &b.metadata.name))
    });

    // Cheapest test first: most pods of a big Job are finished and untracked.
    let tracked = |p: &Pod| {
        (pods::has_finalizer(p, TRACKING_FINALIZER) || adopted.contains(uid(p)))
            && !removed.contains(uid(p))
    };
    let valid_index = |p: &Pod| pods::completion_index(p).filter(|i| *i < completions_n);
    let countable = |p: &Pod| !indexed || valid_index(p).is_some();
    let is_failed = |p: &Pod| pods::is_failed(p, only_replace_failed);

    let active_pods: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| pods::is_active(p))
        .collect();
    let mut active = active_pods.len() as i32;
    let mut ready = active_pods.iter().filter(|p| pods::is_ready(p)).count() as i32;
    let mut terminating = owned.iter().filter(|p| pods::is_terminating(p)).count() as i32;

    let stored = current
        .uncounted_terminated_pods
        .clone()
        .unwrap_or_default();
    let stored_succeeded: Vec<String> = stored.succeeded.unwrap_or_default();
    let stored_failed: Vec<String> = stored.failed.unwrap_or_default();
    let stored_succeeded_set: HashSet<&str> = stored_succeeded.iter().map(String::as_str).collect();
    let stored_failed_set: HashSet<&str> = stored_failed.iter().map(String::as_str).collect();

    let new_succeeded_pods: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| {
            tracked(p)
                && pods::is_succeeded(p)
                && countable(p)
                && !stored_succeeded_set.contains(uid(p))
        })
        .collect();
    let new_failed_pods: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| {
            tracked(p) && is_failed(p) && countable(p) && !stored_failed_set.contains(uid(p))
        })
        .collect();
    let new_failed_counted = new_failed_pods
        .iter()
        .filter(|p| failure_policy::match_pod(policy, p).counts)
        .count() as i32;
    let mut succeeded_total = current.succeeded.unwrap_or(0)
        + new_succeeded_pods.len() as i32
        + stored_succeeded.len() as i32;
    let failed_total =
        current.failed.unwrap_or(0) + new_failed_counted + stored_failed.len() as i32;

    let mut start_time = current.start_time.clone();
    if start_time.is_none() && !suspended {
        start_time = Some(Time(now));
    }
    plan.backoff = backoff::next_record(s.backoff, &new_succeeded_pods, &new_failed_pods);

    let mut conditions: Vec<JobCondition> = current.conditions.clone().unwrap_or_default();
    let new_failure_target = |reason: &str, message: &str| {
        Some(new_condition(FAILURE_TARGET, "True", reason, message, now))
    };

    // The condition the Job is heading to: an existing SuccessCriteriaMet or FailureTarget
    // wins; then podFailurePolicy FailJob, backoffLimit, activeDeadlineSeconds.
    let mut finished: Option<JobCondition> = None;
    if let Some(c) = find(&conditions, SUCCESS_CRITERIA_MET).filter(|c| c.status == "True") {
        finished = Some(c.clone());
    } else if let Some(c) = find(&conditions, FAILURE_TARGET).filter(|c| c.status == "True") {
        finished = Some(new_condition(
            FAILED,
            "True",
            c.reason.as_deref().unwrap_or(""),
            c.message.as_deref().unwrap_or(""),
            now,
        ));
    } else if let Some(message) = owned
        .iter()
        .filter(|p| is_failed(p))
        .find_map(|p| failure_policy::match_pod(policy, p).fail_job_message)
    {
        finished = new_failure_target(REASON_POD_FAILURE_POLICY, &message);
    }
    let restarts_exceeded = past_backoff_limit_on_failure(spec, &owned, backoff_limit);
    if finished.is_none() {
        if failed_total > backoff_limit || restarts_exceeded {
            finished = new_failure_target(REASON_BACKOFF_LIMIT, MESSAGE_BACKOFF_LIMIT);
        } else if let (Some(seconds), Some(start), false) =
            (spec.active_deadline_seconds, &start_time, suspended)
        {
            let allowed = SignedDuration::from_secs(seconds);
            let elapsed = now.duration_since(start.0);
            if elapsed >= allowed {
                finished = new_failure_target(REASON_DEADLINE, MESSAGE_DEADLINE);
            } else {
                requeue_at_most(&mut plan, to_duration(allowed - elapsed));
            }
        }
    }

    let prev_succeeded_indexes = Intervals::parse(
        current.completed_indexes.as_deref().unwrap_or(""),
        completions_n,
    );
    let mut succeeded_indexes = Intervals::default();
    let mut failed_indexes: Option<Intervals> = None;
    let mut delayed: BTreeMap<i32, &Pod> = BTreeMap::new();
    if indexed {
        let mut newly: Vec<i32> = owned
            .iter()
            .filter(|p| tracked(p) && pods::is_succeeded(p))
            .filter_map(|p| valid_index(p))
            .collect();
        newly.sort_unstable();
        succeeded_indexes = prev_succeeded_indexes.with_indexes(&newly);
        succeeded_total = succeeded_indexes.total();
        if let Some(limit) = per_index {
            let prev = Intervals::parse(
                current.failed_indexes.as_deref().unwrap_or(""),
                completions_n,
            );
            let mut newly_failed: Vec<i32> = owned
                .iter()
                .filter(|p| tracked(p) && is_index_failed(p, limit, policy, only_replace_failed))
                .filter_map(|p| valid_index(p))
                .collect();
            newly_failed.sort_unstable();
            let failed = prev.with_indexes(&newly_failed);
            if finished.is_none() {
                if spec
                    .max_failed_indexes
                    .is_some_and(|max| failed.total() > max)
                {
                    finished =
                        new_failure_target(REASON_MAX_FAILED_INDEXES, MESSAGE_MAX_FAILED_INDEXES);
                } else if failed.total() > 0
                    && failed.total() + succeeded_indexes.total() >= completions_n
                {
                    finished = new_failure_target(REASON_FAILED_INDEXES, MESSAGE_FAILED_INDEXES);
                }
            }
            let active_indexes: HashSet<i32> = active_pods
                .iter()
                .filter_map(|p| pods::completion_index(p))
                .collect();
            for &p in &owned {
                if !tracked(p) || !is_failed(p) {
                    continue;
                }
                let Some(ix) = valid_index(p) else { continue };
                if succeeded_indexes.has(ix) || failed.has(ix) || active_indexes.contains(&ix) {
                    continue;
                }
                let replace = delayed.get(&ix).is_none_or(|last| {
                    absolute_failures(last) <= absolute_failures(p)
                        && pods::finish_time(p) >= pods::finish_time(last)
                });
                if replace {
                    delayed.insert(ix, p);
                }
            }
            failed_indexes = Some(failed);
        }
        if finished.is_none()
            && let Some(message) = success_policy::matched(
                spec.success_policy.as_ref(),
                completions_n,
                &succeeded_indexes,
            )
        {
            finished = Some(new_condition(
                SUCCESS_CRITERIA_MET,
                "True",
                REASON_SUCCESS_POLICY,
                &message,
                now,
            ));
        }
    }

    let failing = finished
        .as_ref()
        .is_some_and(|c| c.type_ != SUCCESS_CRITERIA_MET);
    let mut to_delete: Vec<&Pod> = Vec::new();
    if finished.is_some() {
        // Remove the remaining active pods. When the Job fails they count as failed, so a pod
        // still holding the finalizer is first recorded in uncountedTerminatedPods (below)
        // and deleted by the next plan: deleting it now would strip the finalizer before
        // the status that counts it is written.
        let mut candidates = active_pods.clone();
        candidates.sort_by(|a, b| pods::least_advanced_first(a, b));
        for p in candidates {
            let held_back = failing
                && tracked(p)
                && !stored_failed_set.contains(uid(p))
                && !stored_succeeded_set.contains(uid(p))
                && countable(p)
                && failure_policy::match_pod(policy, p).counts;
            if !held_back && to_delete.len() < MAX_POD_CREATE_DELETE_PER_SYNC {
                to_delete.push(p);
            }
        }
    } else {
        if !job_deleting {
            let pending = Pending {
                indexed,
                completions_n,
                suspended,
                only_replace_failed,
                per_index: per_index.is_some(),
                policy,
                succeeded_indexes: &succeeded_indexes,
                failed_indexes: failed_indexes.as_ref(),
                delayed: &delayed,
                now,
            };
            let want_active = match completions {
                None if succeeded_total > 0 => active,
                None => parallelism,
                Some(c) => (c - succeeded_total).clamp(0, parallelism),
            };
            if suspended {
                to_delete =
                    removal_candidates(indexed, completions_n, &active_pods, active_pods.len());
                to_delete.truncate(MAX_POD_CREATE_DELETE_PER_SYNC);
            } else {
                let rm_at_least = (active - want_active).max(0) as usize;
                to_delete = removal_candidates(indexed, completions_n, &active_pods, rm_at_least);
                to_delete.truncate(MAX_POD_CREATE_DELETE_PER_SYNC);
                if to_delete.is_empty() {
                    let held = if only_replace_failed { terminating } else { 0 };
                    let diff = want_active - held - active;
                    if diff > 0 {
                        let created = create_pods(
                            s,
                            &pending,
                            &owned,
                            &active_pods,
                            diff as usize,
                            &mut plan,
                        );
                        active += created as i32;
                    }
                }
            }
            if !to_delete.is_empty() {
                plan.decisions.push(format!(
                    "deleting {} active pods ({})",
                    to_delete.len(),
                    if suspended {
                        "Job suspended"
                    } else {
                        "more than wanted"
                    }
                ));
            }
        }
    }
    let deleted_ready = to_delete.iter().filter(|p| pods::is_ready(p)).count() as i32;
    active -= to_delete.len() as i32;
    ready -= deleted_ready;
    terminating += to_delete.len() as i32;
    let delete_set: HashSet<&str> = to_delete.iter().map(|p| uid(p)).collect();
    plan.delete = to_delete.iter().map(|p| pod_ref(p)).collect();

    if finished.is_none() {
        // A Job being deleted only counts what finished, but it still reaches
        // SuccessCriteriaMet, as upstream's does, once every pod is accounted for.
        let complete = match completions {
            None => succeeded_total > 0 && active == 0,
            Some(c) => succeeded_total >= c && active == 0,
        };
        if complete {
            finished = Some(new_condition(
                SUCCESS_CRITERIA_MET,
                "True",
                REASON_COMPLETIONS_REACHED,
                MESSAGE_COMPLETIONS_REACHED,
                now,
            ));
        } else if job_deleting {
            // Neither suspended nor resumed: it only winds down.
        } else if suspended {
            if ensure(
                &mut conditions,
                SUSPENDED,
                "True",
                "JobSuspended",
                "Job suspended",
                now,
            ) {
                plan.events
                    .push(event(EventType::Normal, "Suspended", "Job suspended"));
                plan.decisions.push("Job suspended".to_string());
            }
            // A suspended Job with no pod left running has not started: the 1.37 job
            // controller clears startTime then, so a resume starts the clock afresh.
            if active == 0 {
                start_time = None;
            }
        } else if ensure(
            &mut conditions,
            SUSPENDED,
            "False",
            "JobResumed",
            "Job resumed",
            now,
        ) {
            plan.events
                .push(event(EventType::Normal, "Resumed", "Job resumed"));
            plan.decisions.push("Job resumed".to_string());
            // activeDeadlineSeconds counts from the resume.
            start_time = Some(Time(now));
            if let Some(seconds) = spec.active_deadline_seconds {
                plan.requeue_after = Some(Duration::from_secs(seconds.max(0) as u64));
            }
        }
    }

    // Finalizer tracking: count pods whose finalizer is gone, record newly finished pods.
    let mut succeeded_counter = current.succeeded.unwrap_or(0);
    let mut failed_counter = current.failed.unwrap_or(0);
    let with_finalizer: HashSet<&str> = owned
        .iter()
        .filter(|p| tracked(p))
        .map(|p| uid(p))
        .collect();
    let mut uncounted_succeeded: Vec<String> = Vec::new();
    for u in &stored_succeeded {
        if with_finalizer.contains(u.as_str()) {
            uncounted_succeeded.push(u.clone());
        } else {
            succeeded_counter += 1;
        }
    }
    let mut uncounted_failed: Vec<String> = Vec::new();
    for u in &stored_failed {
        if with_finalizer.contains(u.as_str()) {
            uncounted_failed.push(u.clone());
        } else {
            failed_counter += 1;
        }
    }
    // Only tracked pods are counted here (most pods of a big Job are long untracked).
    let mut tracking_order: Vec<&Pod> = owned.iter().copied().filter(|p| tracked(p)).collect();
    if indexed {
        tracking_order.sort_by_cached_key(|p| pods::completion_index(p).map_or(-1, i64::from));
    }
    let job_finishing = finished.is_some();
    let mut new_succeeded_indexes: Vec<i32> = Vec::new();
    let mut reached_max_uncounted = false;
    let mut newly_succeeded = 0u32;
    let mut newly_failed = 0u32;
    let mut remove: Vec<PodRef> = Vec::new();
    for &p in &tracking_order {
        if delete_set.contains(uid(p)) {
            continue;
        }
        let considered_failed = is_failed(p);
        let removable = job_deleting
            || job_finishing
            || pods::is_succeeded(p)
            || (considered_failed
                && valid_index(p)
                    .is_none_or(|ix| delayed.get(&ix).is_none_or(|d| uid(d) != uid(p))));
        if !removable {
            continue;
        }
        remove.push(pod_ref(p));
        if pods::is_succeeded(p) && !stored_failed_set.contains(uid(p)) {
            if indexed {
                if let Some(ix) = valid_index(p)
                    && !prev_succeeded_indexes.has(ix)
                {
                    new_succeeded_indexes.push(ix);
                    newly_succeeded += 1;
                }
            } else if !stored_succeeded_set.contains(uid(p)) {
                uncounted_succeeded.push(uid(p).to_string());
                newly_succeeded += 1;
            }
        } else if (considered_failed || failing)
            && !stored_failed_set.contains(uid(p))
            && countable(p)
        {
            let matched = failure_policy::match_pod(policy, p);
            if let Some(action) = matched.action {
                *plan
                    .outcome
                    .failure_policy_actions
                    .entry(action.as_str().to_string())
                    .or_default() += 1;
            }
            if matched.counts {
                uncounted_failed.push(uid(p).to_string());
                newly_failed += 1;
            }
        }
        if new_succeeded_indexes.len() + uncounted_succeeded.len() + uncounted_failed.len()
            >= MAX_UNCOUNTED_PODS
        {
            reached_max_uncounted = true;
            break;
        }
    }
    if newly_succeeded > 0 {
        plan.outcome
            .pods_finished
            .insert("succeeded".to_string(), newly_succeeded);
    }
    if newly_failed > 0 {
        plan.outcome
            .pods_finished
            .insert("failed".to_string(), newly_failed);
    }

    let mut new_status = JobStatus {
        start_time,
        ..current.clone()
    };
    if indexed {
        succeeded_indexes = succeeded_indexes.with_indexes(&new_succeeded_indexes);
        succeeded_counter = succeeded_indexes.total();
        let text = succeeded_indexes.to_string();
        new_status.completed_indexes = (!text.is_empty()).then_some(text);
        if let Some(failed) = &failed_indexes {
            new_status.failed_indexes = Some(failed.to_string());
        }
    }

    let mut final_condition: Option<JobCondition> = None;
    if let Some(c) = finished.take() {
        if c.type_ == FAILURE_TARGET {
            conditions.push(c.clone());
            plan.decisions.push(format!(
                "failure target: {} ({})",
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or("")
            ));
            final_condition = Some(new_condition(
                FAILED,
                "True",
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or(""),
                now,
            ));
        } else if c.type_ == SUCCESS_CRITERIA_MET {
            if !is_true(&conditions, SUCCESS_CRITERIA_MET) {
                conditions.push(c.clone());
                plan.decisions.push(format!(
                    "success criteria met: {}",
                    c.reason.as_deref().unwrap_or("")
                ));
            }
            final_condition = Some(new_condition(
                COMPLETE,
                "True",
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or(""),
                now,
            ));
        } else {
            final_condition = Some(c);
        }
    }
    let nothing_left = uncounted_succeeded.is_empty()
        && uncounted_failed.is_empty()
        && terminating == 0
        && active == 0;
    let mut finished_now = None;
    if let Some(c) = &final_condition
        && !reached_max_uncounted
        && nothing_left
    {
        let reason = c.reason.clone().unwrap_or_default();
        let message = c.message.clone().unwrap_or_default();
        ensure(&mut conditions, &c.type_, "True", &reason, &message, now);
        if c.type_ == COMPLETE {
            let transition =
                find(&conditions, COMPLETE).and_then(|c| c.last_transition_time.clone());
            new_status.completion_time = transition;
        }
        finished_now = Some((c.type_.clone(), reason, message));
    }

    new_status.active = Some(active);
    new_status.ready = Some(ready);
    new_status.terminating = Some(terminating);
    new_status.succeeded = Some(succeeded_counter);
    new_status.failed = Some(failed_counter);
    new_status.conditions = (!conditions.is_empty()).then_some(conditions);
    new_status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: (!uncounted_succeeded.is_empty()).then_some(uncounted_succeeded),
        failed: (!uncounted_failed.is_empty()).then_some(uncounted_failed),
    });
    let new_status = normalized(&new_status);
    if new_status != normalized(&current) {
        plan.status = Some(new_status.clone());
    }

    remove.sort();
    remove.dedup();
    // Not a decision of its own: the executor logs how many finalizers it removed.
    plan.remove_finalizers = remove;

    if let Some((type_, reason, message)) = &finished_now {
        if type_ == COMPLETE {
            if completions.is_some_and(|c| new_status.succeeded.unwrap_or(0) > c) {
                plan.events.push(event(
                    EventType::Warning,
                    "TooManySucceededPods",
                    "Too many succeeded pods running after completion count reached",
                ));
            }
            plan.events
                .push(event(EventType::Normal, "Completed", "Job completed"));
            plan.outcome.finished = Some(("succeeded".to_string(), reason.clone()));
            plan.decisions.push("Job completed".to_string());
        } else {
            plan.events.push(event(EventType::Warning, reason, message));
            plan.outcome.finished = Some(("failed".to_string(), reason.clone()));
            plan.decisions.push(format!("Job failed: {reason}"));
        }
        plan.requeue_after = None;
    }
    if final_condition.is_some() && finished_now.is_none() {
        // Only the pods are left to wait for; their events bring the Job back.
        plan.requeue_after = None;
    }

    plan.outcome.rule = rule_sentence(
        spec,
        &new_status,
        final_condition.as_ref(),
        finished_now.is_some(),
        backoff_limit,
        &plan,
        now,
    );
    plan
}

fn absolute_failures(p: &Pod) -> i32 {
    pods::index_failure_count(p).saturating_add(pods::index_ignored_failure_count(p))
}

/// Whether a pod's failure fails its index (backoffLimitPerIndex): a FailIndex rule
/// matched, or a counted failure when the index already used up its retries.
fn is_index_failed(
    p: &Pod,
    limit: i32,
    policy: Option<&k8s_openapi::api::batch::v1::PodFailurePolicy>,
    only_replace_failed: bool,
) -> bool {
    if !pods::is_failed(p, only_replace_failed) {
        return false;
    }
    let matched = failure_policy::match_pod(policy, p);
    if matched.action == Some(Action::FailIndex) {
        return true;
    }
    matched.counts && pods::index_failure_count(p) >= limit
}

/// restartPolicy OnFailure: container restarts of running and pending pods count as
/// failures (backoffLimit 0 tolerates none).
fn past_backoff_limit_on_failure(
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    pods_: &[&Pod],
    limit: i32,
) -> bool {
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .is_some_and(|s| s.restart_policy.as_deref() == Some("OnFailure"));
    if !on_failure {
        return false;
    }
    let restarts: i64 = pods_
        .iter()
        .filter(|p| matches!(pods::phase(p), "Running" | "Pending"))
        .map(|p| pods::restart_count(p))
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= i64::from(limit)
    }
}

/// Active pods to delete, least advanced first: for Indexed Jobs every pod without a
/// valid index and all but the most advanced pod of a repeated index, then as many more
/// as needed to reach `at_least`.
fn removal_candidates<'a>(
    indexed: bool,
    completions: i32,
    active: &[&'a Pod],
    at_least: usize,
) -> Vec<&'a Pod> {
    let mut rm: Vec<&Pod> = Vec::new();
    let mut left: Vec<&Pod> = Vec::new();
    if indexed {
        let mut by_index: BTreeMap<i32, Vec<&Pod>> = BTreeMap::new();
        let mut invalid: Vec<&Pod> = Vec::new();
        for &p in active {
            match pods::completion_index(p) {
                Some(ix) if ix < completions => by_index.entry(ix).or_default().push(p),
                _ => invalid.push(p),
            }
        }
        invalid.sort_by(|a, b| pods::least_advanced_first(a, b));
        rm.extend(invalid);
        for (_, mut same) in by_index {
            same.sort_by(|a, b| pods::least_advanced_first(a, b));
            let keep = same.pop();
            rm.extend(same);
            left.extend(keep);
        }
    } else {
        left = active.to_vec();
    }
    if rm.len() < at_least {
        left.sort_by(|a, b| pods::least_advanced_first(a, b));
        let more = (at_least - rm.len()).min(left.len());
        rm.extend(left.into_iter().take(more));
    }
    rm
}

/// What pod creation needs to know beyond the snapshot.
struct Pending<'a> {
    indexed: bool,
    completions_n: i32,
    suspended: bool,
    only_replace_failed: bool,
    per_index: bool,
    policy: Option<&'a k8s_openapi::api::batch::v1::PodFailurePolicy>,
    succeeded_indexes: &'a Intervals,
    failed_indexes: Option<&'a Intervals>,
    delayed: &'a BTreeMap<i32, &'a Pod>,
    now: Timestamp,
}

/// Adds up to `wanted` pods to `plan.create` unless the pod failure backoff says wait.
/// Returns how many were planned.
fn create_pods(
    s: &Snapshot<'_>,
    c: &Pending<'_>,
    owned: &[&Pod],
    active: &[&Pod],
    wanted: usize,
    plan: &mut Plan,
) -> usize {
    debug_assert!(!c.suspended);
    if !c.per_index {
        let wait = backoff::remaining(
            plan.backoff.failures_after_last_success,
            plan.backoff.last_failure_time,
            c.now,
        );
        if !wait.is_zero() {
            requeue_at_most(plan, wait);
            plan.outcome.pod_backoff = Some(wait);
            plan.decisions.push(format!(
                "waiting {} s of pod failure backoff ({}) before creating {}",
                wait.as_secs(),
                pods_word(plan.backoff.failures_after_last_success as usize, "failure"),
                pods_word(wanted, "pod")
            ));
            return 0;
        }
    }
    let wanted = wanted.min(MAX_POD_CREATE_DELETE_PER_SYNC);
    if !c.indexed {
        plan.create
            .extend((0..wanted).map(|_| template::build_pod(s.job, None, None)));
        plan.decisions
            .push(format!("creating {}", pods_word(wanted, "pod")));
        return wanted;
    }
    let mut taken: Vec<i32> = active
        .iter()
        .filter_map(|p| pods::completion_index(p))
        .collect();
    if c.only_replace_failed {
        taken.extend(
            owned
                .iter()
                .filter(|p| pods::is_terminating(p))
                .filter_map(|p| pods::completion_index(p)),
        );
    }
    taken.sort_unstable();
    let mut non_pending = c.succeeded_indexes.with_indexes(&taken);
    if let Some(failed) = c.failed_indexes {
        non_pending = non_pending.merge(failed);
    }
    let mut indexes = indexed::first_pending(&non_pending, wanted, c.completions_n);
    if c.per_index {
        let mut ready_now = Vec::new();
        let mut soonest: Option<Duration> = None;
        for ix in indexes {
            let wait = c.delayed.get(&ix).map_or(Duration::ZERO, |last| {
                let failures = (absolute_failures(last) as u32).saturating_add(1);
                backoff::remaining(failures, Some(pods::finish_time(last)), c.now)
            });
            if wait.is_zero() {
                ready_now.push(ix);
            } else {
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            }
        }
        if ready_now.is_empty() {
            if let Some(wait) = soonest {
                requeue_at_most(plan, wait);
                plan.outcome.pod_backoff = Some(wait);
                plan.decisions
                    .push(format!("waiting {} s of per-index backoff", wait.as_secs()));
            }
            return 0;
        }
        indexes = ready_now;
    }
    for &ix in &indexes {
        let counts = c
            .per_index
            .then(|| new_index_failure_counts(c.policy, c.delayed.get(&ix).copied()));
        plan.create
            .push(template::build_pod(s.job, Some(ix), counts));
    }
    if !indexes.is_empty() {
        plan.decisions.push(format!(
            "creating {} for indexes {}",
            pods_word(indexes.len(), "pod"),
            Intervals::from_indexes(&indexes)
        ));
    }
    indexes.len()
}

/// The failure counts a replacement pod carries: the replaced pod's counts plus its own
/// failure (ignored failures counted apart).
fn new_index_failure_counts(
    policy: Option<&k8s_openapi::api::batch::v1::PodFailurePolicy>,
    replaced: Option<&Pod>,
) -> IndexFailureCounts {
    let Some(p) = replaced else {
        return IndexFailureCounts::default();
    };
    let mut counts = IndexFailureCounts {
        failed: pods::index_failure_count(p),
        ignored: pods::index_ignored_failure_count(p),
    };
    if failure_policy::match_pod(policy, p).counts {
        counts.failed += 1;
    } else {
        counts.ignored += 1;
    }
    counts
}

/// Whole seconds, rounded up: "next pod in 1 s" rather than "in 0 s" for 300 ms.
fn seconds_up(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

fn rule_sentence(
    spec: &JobSpec,
    st: &JobStatus,
    final_condition: Option<&JobCondition>,
    finished_now: bool,
    backoff_limit: i32,
    plan: &Plan,
    now: Timestamp,
) -> String {
    let failed = st.failed.unwrap_or(0);
    if let Some(c) = final_condition {
        let reason = c.reason.as_deref().unwrap_or("");
        return if finished_now {
            format!(
                "{} ({reason})",
                if c.type_ == COMPLETE {
                    "Job complete"
                } else {
                    "Job failed"
                }
            )
        } else {
            format!(
                "{} ({reason}); waiting for {} active, {} terminating and {} uncounted pods",
                if c.type_ == COMPLETE {
                    "success criteria met"
                } else {
                    "failure target reached"
                },
                st.active.unwrap_or(0),
                st.terminating.unwrap_or(0),
                st.uncounted_terminated_pods.as_ref().map_or(0, |u| u
                    .succeeded
                    .iter()
                    .chain(u.failed.iter())
                    .flatten()
                    .count())
            )
        };
    }
    if spec.suspend == Some(true) {
        return "Job suspended: no pods run".to_string();
    }
    let succeeded = st.succeeded.unwrap_or(0);
    let mut parts = vec![match spec.completions {
        Some(c) => format!("{succeeded} of {c} completions"),
        None if succeeded > 0 => "a pod succeeded; done once no pod is active".to_string(),
        None => "done when any pod succeeds".to_string(),
    }];
    let per_index = spec.completion_mode.as_deref() == Some("Indexed")
        && spec.backoff_limit_per_index.is_some();
    if let (true, Some(limit)) = (per_index, spec.backoff_limit_per_index) {
        let failed_indexes = st.failed_indexes.as_deref().filter(|f| !f.is_empty());
        let mut part = format!(
            "backoffLimitPerIndex {limit}, failed indexes {}",
            failed_indexes.unwrap_or("none")
        );
        if let Some(max) = spec.max_failed_indexes {
            part.push_str(&format!(" (maxFailedIndexes {max})"));
        }
        parts.push(part);
    } else {
        parts.push(format!(
            "backoffLimit {backoff_limit}, {failed} {} counted",
            if failed == 1 { "failure" } else { "failures" }
        ));
    }
    if let Some(wait) = plan.outcome.pod_backoff {
        let failures = plan.backoff.failures_after_last_success;
        parts.push(if per_index || failures == 0 {
            format!("next pod in {} s", seconds_up(wait))
        } else {
            format!(
                "next pod in {} s ({} s backoff after {failures} {})",
                seconds_up(wait),
                backoff::delay_for(failures).as_secs(),
                if failures == 1 { "failure" } else { "failures" }
            )
        });
    }
    if let (Some(seconds), Some(start)) = (spec.active_deadline_seconds, &st.start_time) {
        let left = to_duration(SignedDuration::from_secs(seconds) - now.duration_since(start.0));
        parts.push(format!(
            "activeDeadlineSeconds {seconds}, {} s left",
            seconds_up(left)
        ));
    }
    parts.join("; ")
}

/// "1 pod", "3 pods": counts in log lines read as sentences.
fn pods_word(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
