//! successPolicy (Indexed Jobs): the Job succeeds early once any rule's succeededIndexes
//! and/or succeededCount are met.

use k8s_openapi::api::batch::v1::SuccessPolicy;

use super::indexed::Intervals;

/// The SuccessCriteriaMet message when a rule matches ("Matched rules at index N").
pub fn matched(
    policy: Option<&SuccessPolicy>,
    completions: i32,
    succeeded: &Intervals,
) -> Option<String> {
    let policy = policy?;
    if succeeded.is_empty() {
        return None;
    }
    for (index, rule) in policy.rules.iter().enumerate() {
        let met = if let Some(text) = &rule.succeeded_indexes {
            let required = Intervals::parse(text, completions);
            if required.is_empty() {
                continue;
            }
            let contained = overlap(&required, succeeded);
            contained == required.total() || rule.succeeded_count.is_some_and(|c| contained >= c)
        } else if let Some(count) = rule.succeeded_count {
            succeeded.total() >= count
        } else {
            false
        };
        if met {
            return Some(format!("Matched rules at index {index}"));
        }
    }
    None
}

/// How many indexes of `required` are in `succeeded`.
fn overlap(required: &Intervals, succeeded: &Intervals) -> i32 {
    let mut count: i64 = 0;
    for &(a, b) in &required.0 {
        for &(c, d) in &succeeded.0 {
            let n = i64::from(b.min(d)) - i64::from(a.max(c)) + 1;
            if n > 0 {
                count += n;
            }
        }
    }
    i32::try_from(count).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {

    use k8s_openapi::api::batch::v1::{SuccessPolicy, SuccessPolicyRule};

    use crate::plan::indexed::Intervals;
    use crate::plan::status::*;
    use crate::plan::testing::*;
    use crate::plan::*;

    type RuleSpec<'a> = (Option<&'a str>, Option<i32>);

    fn with_success_policy(mut j: Job, rules: Vec<(Option<&str>, Option<i32>)>) -> Job {
        spec(&mut j).success_policy = Some(SuccessPolicy {
            rules: rules
                .into_iter()
                .map(|(idx, count)| SuccessPolicyRule {
                    succeeded_indexes: idx.map(String::from),
                    succeeded_count: count,
                })
                .collect(),
        });
        j
    }

    #[test]
    fn success_policy_rules_match() {
        let cases: Vec<(Vec<RuleSpec>, &str, Option<&str>)> = vec![
            (
                vec![(Some("0"), None)],
                "0",
                Some("Matched rules at index 0"),
            ),
            (vec![(Some("0-2"), None)], "0,1", None),
            (
                vec![(Some("0-2"), Some(2))],
                "0,1",
                Some("Matched rules at index 0"),
            ),
            (
                vec![(Some("5"), None), (None, Some(2))],
                "3,4",
                Some("Matched rules at index 1"),
            ),
            (vec![(None, Some(3))], "0,4", None),
            (vec![(Some("9"), None)], "0", None),
        ];
        for (rules, succeeded, want) in cases {
            let policy = SuccessPolicy {
                rules: rules
                    .iter()
                    .map(|(i, c)| SuccessPolicyRule {
                        succeeded_indexes: i.map(String::from),
                        succeeded_count: *c,
                    })
                    .collect(),
            };
            let got = success_policy::matched(Some(&policy), 5, &Intervals::parse(succeeded, 5));
            assert_eq!(got.as_deref(), want, "{rules:?} {succeeded}");
        }
    }

    #[test]
    fn success_policy_met_removes_pods_then_completes() {
        let mut sim = Sim::new(with_success_policy(
            indexed_job(3, 3),
            vec![(Some("0"), None)],
        ));
        sim.apply(&sim.plan(), 4);
        let leader = sim
            .pods
            .iter()
            .position(|p| pods::completion_index(p) == Some(0))
            .unwrap();
        sim.set_phase(leader, "Succeeded");
        let p = sim.plan();
        let s = p.status.clone().unwrap();
        let scm = find(conditions(&s), SUCCESS_CRITERIA_MET).unwrap();
        assert_eq!(
            (scm.reason.as_deref(), scm.message.as_deref()),
            (
                Some(REASON_SUCCESS_POLICY),
                Some("Matched rules at index 0")
            )
        );
        assert_eq!(p.delete.len(), 2);
        sim.apply(&p, 4);
        sim.settle();
        let s = sim.status();
        let complete = find(conditions(&s), COMPLETE).unwrap();
        assert_eq!(complete.reason.as_deref(), Some(REASON_SUCCESS_POLICY));
        assert_eq!(s.completed_indexes.as_deref(), Some("0"));
        assert_eq!((s.succeeded, s.failed), (Some(1), None));
    }
}
