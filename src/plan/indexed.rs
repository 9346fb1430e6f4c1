//! Completion indexes of Indexed Jobs and the interval lists (`1,3-5,7`) that
//! `completedIndexes`, `failedIndexes` and successPolicy rules are written in; which indexes
//! completed or failed in a sync, and backoffLimitPerIndex's verdict on them.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::claim::Claimed;
use super::failure_policy::{self, Action};
use super::pods;
use super::spec::Spec;
use super::status::{
    FAILURE_TARGET, MESSAGE_FAILED_INDEXES, MESSAGE_MAX_FAILED_INDEXES, REASON_FAILED_INDEXES,
    REASON_MAX_FAILED_INDEXES, new_condition,
};

/// Sorted, non-overlapping, non-adjacent closed intervals of completion indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervals(pub Vec<(i32, i32)>);

impl Intervals {
    /// Parses an interval list the way the Job controller reads its own status: corrupt
    /// pieces are skipped, anything at or past `completions` is cut off.
    ///
    /// A status someone else wrote may hold pieces out of order, overlapping or reversed
    /// (`5-3`); upstream's reader assumes its own order. Reversed pieces are skipped and the
    /// rest sorted and merged, so every list this returns is in the form the other methods
    /// rely on (sorted, disjoint, below `completions`).
    pub fn parse(text: &str, completions: i32) -> Self {
        let mut pieces: Vec<(i32, i32)> = Vec::new();
        if text.is_empty() {
            return Self(pieces);
        }
        for piece in text.split(',') {
            let mut limits = piece.split('-');
            let Some(Ok(first)) = limits.next().map(str::parse::<i32>) else {
                continue;
            };
            if first < 0 || first >= completions {
                continue;
            }
            let last = match limits.next() {
                Some(s) => match s.parse::<i32>() {
                    Ok(last) => last.min(completions.saturating_sub(1)),
                    Err(_) => continue,
                },
                None => first,
            };
            if last >= first {
                pieces.push((first, last));
            }
        }
        pieces.sort_unstable();
        Self::default().merge(&Self(pieces))
    }

    /// Whether `text` is a well-formed list whose indexes are all below `completions`
    /// (what the apiserver checks for Jobs with a custom managedBy).
    pub fn is_valid_list(text: &str, completions: i32) -> bool {
        if text.is_empty() {
            return true;
        }
        let mut previous_last: Option<i64> = None;
        for piece in text.split(',') {
            let mut limits = piece.splitn(2, '-');
            let first = limits.next().and_then(parse_plain);
            let last = match limits.next() {
                Some(s) => parse_plain(s),
                None => first,
            };
            let (Some(first), Some(last)) = (first, last) else {
                return false;
            };
            if first > last || last >= i64::from(completions) {
                return false;
            }
            if let Some(prev) = previous_last
                && first <= prev
            {
                return false;
            }
            previous_last = Some(last);
        }
        true
    }

    pub fn from_indexes(indexes: &[i32]) -> Self {
        let mut sorted = indexes.to_vec();
        sorted.sort_unstable();
        Self::default().with_indexes(&sorted)
    }

    /// A new list that also holds `sorted` (ascending, duplicates allowed).
    pub fn with_indexes(&self, sorted: &[i32]) -> Self {
        self.merge(&Intervals(sorted.iter().map(|&i| (i, i)).collect()))
    }

    pub fn merge(&self, other: &Intervals) -> Self {
        let mut out: Vec<(i32, i32)> = Vec::new();
        let mut push = |iv: (i32, i32)| match out.last_mut() {
            Some(last) if iv.0 <= last.1.saturating_add(1) => last.1 = last.1.max(iv.1),
            _ => out.push(iv),
        };
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < other.0.len() {
            if self.0[i].0 < other.0[j].0 {
                push(self.0[i]);
                i += 1;
            } else {
                push(other.0[j]);
                j += 1;
            }
        }
        self.0[i..]
            .iter()
            .chain(&other.0[j..])
            .for_each(|&iv| push(iv));
        Self(out)
    }

    /// How many indexes the list holds (at most `i32::MAX`, what a count in the status
    /// can say).
    pub fn total(&self) -> i32 {
        let total: i64 = self
            .0
            .iter()
            .map(|&(a, b)| i64::from(b) - i64::from(a) + 1)
            .sum();
        i32::try_from(total).unwrap_or(i32::MAX)
    }

    pub fn has(&self, index: i32) -> bool {
        let pos = self.0.partition_point(|iv| iv.1 < index);
        pos < self.0.len() && self.0[pos].0 <= index
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn overlaps(&self, other: &Intervals) -> bool {
        self.0
            .iter()
            .any(|&(a, b)| other.0.iter().any(|&(c, d)| a <= d && c <= b))
    }
}

fn parse_plain(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Intervals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, &(first, last)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{first}")?;
            if first.checked_add(1) == Some(last) {
                write!(f, ",{last}")?;
            } else if last > first {
                write!(f, "-{last}")?;
            }
        }
        Ok(())
    }
}

/// The `count` lowest indexes below `completions` not covered by `taken`.
pub fn first_pending(taken: &Intervals, count: usize, completions: i32) -> Vec<i32> {
    let mut out = Vec::with_capacity(count.min(completions.max(0) as usize));
    let mut candidate = 0;
    for &(first, last) in &taken.0 {
        while candidate < completions && out.len() < count && candidate < first {
            out.push(candidate);
            candidate += 1;
        }
        candidate = candidate.max(last.saturating_add(1));
    }
    while candidate < completions && out.len() < count {
        out.push(candidate);
        candidate += 1;
    }
    out
}

/// Where an Indexed Job's indexes stand in this sync; empty for a NonIndexed Job.
#[derive(Debug, Default)]
pub struct Indexes<'a> {
    /// `completedIndexes` as the status holds it.
    pub previously_completed: Intervals,
    /// With the indexes of succeeded pods that still hold the tracking finalizer.
    pub completed: Intervals,
    /// backoffLimitPerIndex only: `failedIndexes` with the indexes that failed now.
    pub failed: Option<Intervals>,
    /// backoffLimitPerIndex only: for each index awaiting a replacement, its latest failed
    /// pod. That pod keeps its tracking finalizer until the replacement exists (upstream's
    /// delayed deletion), and the replacement's failure counts and backoff start from it.
    pub last_failed: BTreeMap<i32, &'a Pod>,
}

impl<'a> Indexes<'a> {
    /// An index is either completed or failed, never both (the apiserver rejects a status
    /// where the lists overlap): a failed index stays failed when a duplicate pod of it
    /// succeeds later, and a completed one stays completed when a duplicate fails.
    pub fn of(
        spec: &Spec<'_>,
        claimed: &Claimed<'a>,
        active: &[&Pod],
        current: &JobStatus,
    ) -> Self {
        if !spec.indexed {
            return Self::default();
        }
        let previously_completed = Intervals::parse(
            current.completed_indexes.as_deref().unwrap_or(""),
            spec.index_count,
        );
        let previously_failed = spec.backoff_limit_per_index.map(|_| {
            Intervals::parse(
                current.failed_indexes.as_deref().unwrap_or(""),
                spec.index_count,
            )
        });
        let was_failed = |ix: &i32| previously_failed.as_ref().is_some_and(|f| f.has(*ix));
        let mut newly: Vec<i32> = claimed
            .owned
            .iter()
            .filter(|p| claimed.tracked(p) && pods::is_succeeded(p))
            .filter_map(|p| spec.valid_index(p))
            .filter(|ix| !was_failed(ix))
            .collect();
        newly.sort_unstable();
        let completed = previously_completed.with_indexes(&newly);
        let mut indexes = Indexes {
            previously_completed,
            completed,
            failed: None,
            last_failed: BTreeMap::new(),
        };
        if let (Some(limit), Some(previously_failed)) =
            (spec.backoff_limit_per_index, previously_failed)
        {
            let mut newly_failed: Vec<i32> = claimed
                .owned
                .iter()
                .filter(|p| claimed.tracked(p) && is_index_failed(spec, p, limit))
                .filter_map(|p| spec.valid_index(p))
                .filter(|ix| !indexes.completed.has(*ix))
                .collect();
            newly_failed.sort_unstable();
            let failed = previously_failed.with_indexes(&newly_failed);
            indexes.last_failed = last_failed(spec, claimed, active, &indexes.completed, &failed);
            indexes.failed = Some(failed);
        }
        indexes
    }

    /// backoffLimitPerIndex: the FailureTarget once more indexes failed than
    /// maxFailedIndexes allows, or once every index finished and some failed.
    pub fn failure_target(&self, spec: &Spec<'_>, now: Timestamp) -> Option<JobCondition> {
        let failed = self.failed.as_ref()?;
        let (reason, message) = if spec
            .job_spec
            .max_failed_indexes
            .is_some_and(|max| failed.total() > max)
        {
            (REASON_MAX_FAILED_INDEXES, MESSAGE_MAX_FAILED_INDEXES)
        } else if failed.total() > 0
            && failed.total().saturating_add(self.completed.total()) >= spec.index_count
        {
            (REASON_FAILED_INDEXES, MESSAGE_FAILED_INDEXES)
        } else {
            return None;
        };
        Some(new_condition(FAILURE_TARGET, "True", reason, message, now))
    }
}

/// Whether a pod's failure fails its index (backoffLimitPerIndex): a FailIndex rule
/// matched, or a counted failure when the index already used up its retries.
fn is_index_failed(spec: &Spec<'_>, pod: &Pod, limit: i32) -> bool {
    if !spec.is_failed(pod) {
        return false;
    }
    let matched = failure_policy::match_pod(spec.pod_failure_policy, pod);
    if matched.action == Some(Action::FailIndex) {
        return true;
    }
    matched.counts && pods::index_failure_count(pod) >= limit
}

/// Per index neither done nor running, its failed pod with the most failures (the latest
/// to finish among equals).
fn last_failed<'a>(
    spec: &Spec<'_>,
    claimed: &Claimed<'a>,
    active: &[&Pod],
    completed: &Intervals,
    failed: &Intervals,
) -> BTreeMap<i32, &'a Pod> {
    let active_indexes: HashSet<i32> = active
        .iter()
        .filter_map(|p| pods::completion_index(p))
        .collect();
    let mut last: BTreeMap<i32, &Pod> = BTreeMap::new();
    for &p in &claimed.owned {
        if !claimed.tracked(p) || !spec.is_failed(p) {
            continue;
        }
        let Some(ix) = spec.valid_index(p) else {
            continue;
        };
        if completed.has(ix) || failed.has(ix) || active_indexes.contains(&ix) {
            continue;
        }
        let replace = last.get(&ix).is_none_or(|seen| {
            pods::index_absolute_failure_count(seen) <= pods::index_absolute_failure_count(p)
                && pods::finish_time(p, spec.now) >= pods::finish_time(seen, spec.now)
        });
        if replace {
            last.insert(ix, p);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use k8s_openapi::api::batch::v1::Job;

    use crate::plan::indexed::Intervals;
    use crate::plan::pods;
    use crate::plan::status::*;
    use crate::plan::testing::*;

    #[test]
    fn interval_strings_round_trip() {
        let cases = [
            ("", "", 10),
            ("0", "0", 10),
            ("0,1", "0,1", 10),
            ("0-2", "0-2", 10),
            ("1,3-5,7", "1,3-5,7", 10),
            ("0,1,2,5", "0-2,5", 10),
            ("3-9", "3-5", 6),
            ("7,8", "", 5),
            ("x,2", "2", 5),
        ];
        for (input, want, completions) in cases {
            assert_eq!(
                Intervals::parse(input, completions).to_string(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn merging_joins_neighbours() {
        let base = Intervals::parse("1,5-6", 100);
        assert_eq!(base.with_indexes(&[0, 2, 3, 4]).to_string(), "0-6");
        assert_eq!(base.with_indexes(&[9, 9]).to_string(), "1,5,6,9");
        assert_eq!(base.total(), 3);
        assert!(base.has(5) && base.has(1) && !base.has(2) && !base.has(7));
    }

    #[test]
    fn first_pending_skips_taken_indexes() {
        let taken = Intervals::parse("0,2-3,6", 10);
        assert_eq!(first_pending(&taken, 3, 10), vec![1, 4, 5]);
        assert_eq!(first_pending(&taken, 10, 8), vec![1, 4, 5, 7]);
        assert_eq!(first_pending(&Intervals::default(), 2, 1), vec![0]);
        assert!(first_pending(&taken, 0, 10).is_empty());
    }

    #[test]
    fn index_list_validation_matches_apiserver_rules() {
        for (text, ok) in [
            ("", true),
            ("0,2-4", true),
            ("2,1", false),
            ("1-1", true),
            ("3-2", false),
            ("0,0", false),
            ("a", false),
            ("0-10", false),
            ("-1", false),
        ] {
            assert_eq!(Intervals::is_valid_list(text, 10), ok, "{text}");
        }
    }

    fn per_index_job(completions: i32, limit: i32) -> Job {
        let mut j = running(indexed_job(completions, completions), 0);
        spec(&mut j).backoff_limit_per_index = Some(limit);
        spec(&mut j).backoff_limit = Some(i32::MAX);
        st(&mut j).failed_indexes = Some(String::new());
        j
    }

    #[test]
    fn per_index_replacement_carries_failure_count() {
        let j = per_index_job(2, 2);
        let pods = [
            pod("a", "Failed").index(0).exit("main", 1, 900),
            pod("b", "Running").index(1),
        ];
        let p = run(&j, &pods);
        assert_eq!(p.create.len(), 1);
        let ann = built(&j, &p)[0].metadata.annotations.clone().unwrap();
        assert_eq!(ann[pods::COMPLETION_INDEX], "0");
        assert_eq!(ann[pods::INDEX_FAILURE_COUNT], "1");
        assert!(!ann.contains_key(pods::INDEX_IGNORED_FAILURE_COUNT));
        assert!(
            p.remove_finalizers.is_empty(),
            "the failed pod keeps its finalizer until its replacement exists"
        );
        let s = p.status.unwrap();
        assert!(uncounted(&s).1.is_empty());
        // With the replacement running, the failed pod is counted and released.
        let pods = [
            pod("a", "Failed").index(0).exit("main", 1, 900),
            pod("c", "Pending")
                .index(0)
                .annotation(pods::INDEX_FAILURE_COUNT, "1"),
            pod("b", "Running").index(1),
        ];
        let p2 = run(&j, &pods);
        assert_eq!(names(&p2.remove_finalizers), vec!["a"]);
        assert_eq!(uncounted(&p2.status.unwrap()).1, vec!["a-uid"]);
    }

    #[test]
    fn first_pods_of_per_index_job_have_zero_failure_count() {
        let mut j = indexed_job(2, 2);
        spec(&mut j).backoff_limit_per_index = Some(1);
        let p = run(&j, &[]);
        for c in &built(&j, &p) {
            assert_eq!(
                c.metadata.annotations.as_ref().unwrap()[pods::INDEX_FAILURE_COUNT],
                "0"
            );
        }
        assert_eq!(p.status.unwrap().failed_indexes.as_deref(), Some(""));
    }

    #[test]
    fn per_index_backoff_delays_the_replacement() {
        let j = per_index_job(2, 3);
        let pods = [
            pod("a", "Failed")
                .index(0)
                .exit("main", 1, 995)
                .annotation(pods::INDEX_FAILURE_COUNT, "1"),
            pod("b", "Running").index(1),
        ];
        let p = run(&j, &pods);
        assert!(p.create.is_empty());
        assert_eq!(
            p.requeue_after,
            Some(Duration::from_secs(15)),
            "second failure: 20 s from 995"
        );
    }

    #[test]
    fn index_fails_after_its_limit_and_is_not_recreated() {
        let j = per_index_job(3, 1);
        let pods = [
            pod("a", "Failed")
                .index(0)
                .exit("main", 1, 900)
                .annotation(pods::INDEX_FAILURE_COUNT, "1"),
            pod("b", "Running").index(1),
            pod("c", "Running").index(2),
        ];
        let p = run(&j, &pods);
        let s = p.status.unwrap();
        assert_eq!(s.failed_indexes.as_deref(), Some("0"));
        assert!(p.create.is_empty());
        assert_eq!(uncounted(&s).1, vec!["a-uid"]);
        assert!(!has_cond(&s, FAILURE_TARGET));
    }

    #[test]
    fn failed_indexes_fail_the_job_when_all_indexes_are_done() {
        let mut j = per_index_job(2, 0);
        st(&mut j).completed_indexes = Some("1".into());
        st(&mut j).succeeded = Some(1);
        let p = run(&j, &[pod("a", "Failed").index(0)]);
        let s = p.status.unwrap();
        let ft = find(conditions(&s), FAILURE_TARGET).unwrap();
        assert_eq!(
            (ft.reason.as_deref(), ft.message.as_deref()),
            (Some(REASON_FAILED_INDEXES), Some(MESSAGE_FAILED_INDEXES))
        );
    }

    #[test]
    fn max_failed_indexes_exceeded_fails_the_job() {
        let mut j = per_index_job(4, 0);
        spec(&mut j).max_failed_indexes = Some(1);
        let pods = [
            pod("a", "Failed").index(0),
            pod("b", "Failed").index(1),
            pod("c", "Running").index(2),
        ];
        let p = run(&j, &pods);
        let s = p.status.unwrap();
        let ft = find(conditions(&s), FAILURE_TARGET).unwrap();
        assert_eq!(ft.reason.as_deref(), Some(REASON_MAX_FAILED_INDEXES));
        assert_eq!(ft.message.as_deref(), Some(MESSAGE_MAX_FAILED_INDEXES));
        assert_eq!(s.failed_indexes.as_deref(), Some("0,1"));
    }

    #[test]
    fn fail_index_action_fails_the_index_at_once() {
        let j = with_policy(
            per_index_job(2, 5),
            vec![exit_rule("FailIndex", "In", &[7], None)],
        );
        let p = run(
            &j,
            &[
                pod("a", "Failed").index(0).exit("main", 7, 900),
                pod("b", "Running").index(1),
            ],
        );
        let s = p.status.unwrap();
        assert_eq!(s.failed_indexes.as_deref(), Some("0"));
        assert_eq!(p.outcome.failure_policy_actions.get("FailIndex"), Some(&1));
        assert!(p.create.is_empty());
    }

    #[test]
    fn ignored_failure_counts_in_ignored_annotation() {
        let j = with_policy(
            per_index_job(1, 1),
            vec![condition_rule("Ignore", "DisruptionTarget")],
        );
        let p = run(
            &j,
            &[pod("a", "Failed")
                .index(0)
                .cond("DisruptionTarget", "True", t(900))],
        );
        let ann = built(&j, &p)[0].metadata.annotations.clone().unwrap();
        assert_eq!(ann[pods::INDEX_FAILURE_COUNT], "0");
        assert_eq!(ann[pods::INDEX_IGNORED_FAILURE_COUNT], "1");
    }

    #[test]
    fn indexed_job_runs_to_completion() {
        let mut sim = Sim::new(indexed_job(3, 2));
        for _ in 0..6 {
            sim.apply(&sim.plan(), 4);
            for n in 0..sim.pods.len() {
                if pods::is_active(&sim.pods[n]) {
                    sim.set_phase(n, "Succeeded");
                }
            }
        }
        sim.settle();
        let s = sim.status();
        assert!(has_cond(&s, COMPLETE), "{s:#?}");
        assert_eq!(s.completed_indexes.as_deref(), Some("0-2"));
        assert_eq!(s.succeeded, Some(3));
    }

    #[test]
    fn garbage_index_lists_parse_sorted_disjoint_and_below_completions() {
        let cases = [
            ("5-3,9,1-2,x,2-4,-1,7-,3", 10, vec![(1, 4), (9, 9)]),
            ("8,2,4-12", 10, vec![(2, 2), (4, 9)]),
            (
                "0-2147483646,0-2147483646",
                i32::MAX,
                vec![(0, i32::MAX - 1)],
            ),
            ("0,1", 0, vec![]),
            ("-,--,1--2,,", 10, vec![]),
        ];
        for (text, completions, want) in cases {
            let got = Intervals::parse(text, completions);
            assert_eq!(got, Intervals(want), "{text:?}");
        }
    }

    #[test]
    fn interval_lists_at_the_int32_limit_count_and_print() {
        assert_eq!(Intervals::parse("0-2147483646", i32::MAX).total(), i32::MAX);
        assert_eq!(Intervals(vec![(0, i32::MAX)]).total(), i32::MAX);
        let last = Intervals(vec![(i32::MAX, i32::MAX)]);
        assert_eq!(last.to_string(), "2147483647");
        let taken = Intervals(vec![(1, 1), (i32::MAX, i32::MAX)]);
        assert_eq!(first_pending(&taken, 3, i32::MAX), vec![0, 2, 3]);
    }

    #[test]
    fn an_active_pod_with_the_largest_index_does_not_stop_the_others() {
        // Indexes past completions on active pods (a tampered annotation) are deleted and
        // the missing ones created, at completions near the int32 limit too.
        let mut j = running(indexed_job(i32::MAX, 2), 1);
        st(&mut j).completed_indexes = Some("0-2147483646,0-2147483646".into());
        let s = run(&j, &[pod("a", "Running").index(i32::MAX)])
            .status
            .unwrap();
        assert_eq!(s.succeeded, Some(i32::MAX));
        assert!(has_cond(&s, SUCCESS_CRITERIA_MET));
        let j = running(indexed_job(1_000_000_000, 2), 2);
        let p = run(
            &j,
            &[
                pod("a", "Running").index(i32::MAX),
                pod("b", "Running").annotation(pods::COMPLETION_INDEX, "-4"),
            ],
        );
        assert_eq!(names(&p.delete), vec!["a", "b"]);
        // A terminating pod's index holds its place (podReplacementPolicy Failed), also a
        // bogus one.
        let mut j = running(indexed_job(1_000_000_000, 2), 0);
        spec(&mut j).pod_replacement_policy = Some("Failed".into());
        st(&mut j).terminating = Some(1);
        let p = run(&j, &[pod("a", "Running").index(i32::MAX).deleting()]);
        let created: Vec<String> = built(&j, &p)
            .iter()
            .map(|c| c.metadata.annotations.as_ref().unwrap()[pods::COMPLETION_INDEX].clone())
            .collect();
        // One of two: the terminating pod holds a place of the parallelism.
        assert_eq!(created, vec!["0"]);
    }

    #[test]
    fn an_index_is_never_both_completed_and_failed() {
        // Two pods of one index (a replacement raced its predecessor): the one that
        // finishes second does not move the index into the other list.
        let mut j = indexed_job(3, 1);
        spec(&mut j).backoff_limit_per_index = Some(0);
        let s = st(&mut j);
        s.completed_indexes = Some("0".into());
        s.succeeded = Some(1);
        s.failed_indexes = Some("".into());
        let p = run(&j, &[pod("a", "Failed").index(0)]);
        let s = status_after(&j, &p);
        assert_eq!(s.failed_indexes.as_deref(), Some(""));
        st(&mut j).completed_indexes = None;
        st(&mut j).succeeded = None;
        st(&mut j).failed_indexes = Some("0".into());
        let p = run(&j, &[pod("a", "Succeeded").index(0)]);
        let s = status_after(&j, &p);
        assert_eq!((s.completed_indexes, s.succeeded), (None, None));
        assert_eq!(names(&p.remove_finalizers), vec!["a"]);
    }
}
