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
    let mut count = 0;
    for &(a, b) in &required.0 {
        for &(c, d) in &succeeded.0 {
            let n = b.min(d) - a.max(c) + 1;
            if n > 0 {
                count += n;
            }
        }
    }
    count
}
