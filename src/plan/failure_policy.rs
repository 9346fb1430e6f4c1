//! podFailurePolicy: the first rule matching a failed pod decides whether the failure
//! fails the Job, fails the index, is ignored or counted.

use k8s_openapi::api::batch::v1::PodFailurePolicy;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    FailJob,
    FailIndex,
    Ignore,
    Count,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::FailJob => "FailJob",
            Action::FailIndex => "FailIndex",
            Action::Ignore => "Ignore",
            Action::Count => "Count",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The matched rule's action, if any rule matched.
    pub action: Option<Action>,
    /// False only for Ignore: the failure does not count towards backoffLimit.
    pub counts: bool,
    /// With FailJob: the FailureTarget message.
    pub fail_job_message: Option<String>,
}

const NO_MATCH: Match = Match {
    action: None,
    counts: true,
    fail_job_message: None,
};

/// Matches a failed pod against the policy's rules in order.
pub fn match_pod(policy: Option<&PodFailurePolicy>, pod: &Pod) -> Match {
    let Some(policy) = policy else {
        return NO_MATCH;
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let status = pod.status.as_ref();
    for (index, rule) in policy.rules.iter().enumerate() {
        let action = match rule.action.as_str() {
            "FailJob" => Action::FailJob,
            "FailIndex" => Action::FailIndex,
            "Ignore" => Action::Ignore,
            "Count" => Action::Count,
            _ => continue,
        };
        let message = if let Some(req) = &rule.on_exit_codes {
            let containers = status
                .and_then(|s| s.container_statuses.as_deref())
                .unwrap_or_default();
            let init = status
                .and_then(|s| s.init_container_statuses.as_deref())
                .unwrap_or_default();
            let found =
                matching_container(containers, req).or_else(|| matching_container(init, req));
            let Some((container, code)) = found else {
                continue;
            };
            format!(
                "Container {container} for pod {namespace}/{name} failed with exit code {code} matching {} rule at index {index}",
                rule.action
            )
        } else if let Some(patterns) = &rule.on_pod_conditions {
            let conditions = status
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default();
            let found = conditions.iter().find(|c| {
                patterns.iter().any(|p| {
                    p.type_ == c.type_ && p.status.as_deref().unwrap_or("True") == c.status
                })
            });
            let Some(condition) = found else {
                continue;
            };
            format!(
                "Pod {namespace}/{name} has condition {} matching {} rule at index {index}",
                condition.type_, rule.action
            )
        } else {
            continue;
        };
        return Match {
            action: Some(action),
            counts: action != Action::Ignore,
            fail_job_message: (action == Action::FailJob).then_some(message),
        };
    }
    NO_MATCH
}

/// The first terminated container with a non-zero exit code that satisfies the requirement.
fn matching_container<'a>(
    statuses: &'a [ContainerStatus],
    req: &k8s_openapi::api::batch::v1::PodFailurePolicyOnExitCodesRequirement,
) -> Option<(&'a str, i32)> {
    statuses.iter().find_map(|cs| {
        let code = cs.state.as_ref()?.terminated.as_ref()?.exit_code;
        if code == 0 || req.container_name.as_ref().is_some_and(|n| *n != cs.name) {
            return None;
        }
        let listed = req.values.contains(&code);
        let matches = match req.operator.as_str() {
            "In" => listed,
            "NotIn" => !listed,
            _ => false,
        };
        matches.then_some((cs.name.as_str(), code))
    })
}

#[cfg(test)]
mod tests {

    use k8s_openapi::api::batch::v1::PodFailurePolicy;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus};

    use crate::plan::status::*;
    use crate::plan::testing::*;
    use crate::plan::*;

    #[test]
    fn pod_failure_policy_rules_match_in_order() {
        use failure_policy::{Action, match_pod};
        let rules = vec![
            exit_rule("Ignore", "In", &[42], Some("side")),
            exit_rule("FailJob", "In", &[42], None),
            condition_rule("Ignore", "DisruptionTarget"),
            exit_rule("Count", "NotIn", &[1, 2], None),
        ];
        let policy = PodFailurePolicy { rules };
        let cases: Vec<(&str, P, Option<Action>, bool)> = vec![
            (
                "container name narrows the rule",
                pod("a", "Failed").exit("side", 42, 1),
                Some(Action::Ignore),
                false,
            ),
            (
                "exit code In",
                pod("b", "Failed").exit("main", 42, 1),
                Some(Action::FailJob),
                true,
            ),
            (
                "pod condition",
                pod("c", "Failed")
                    .exit("main", 1, 1)
                    .cond("DisruptionTarget", "True", t(1)),
                Some(Action::Ignore),
                false,
            ),
            (
                "NotIn",
                pod("d", "Failed").exit("main", 5, 1),
                Some(Action::Count),
                true,
            ),
            (
                "no rule matches",
                pod("e", "Failed").exit("main", 2, 1),
                None,
                true,
            ),
            (
                "exit code 0 never matches",
                pod("f", "Failed").exit("main", 0, 1),
                None,
                true,
            ),
            ("no terminated container", pod("g", "Failed"), None, true),
        ];
        for (name, p, action, counts) in cases {
            let m = match_pod(Some(&policy), &p.0);
            assert_eq!((m.action, m.counts), (action, counts), "{name}");
        }
    }

    #[test]
    fn init_containers_are_checked_after_containers() {
        let policy = PodFailurePolicy {
            rules: vec![exit_rule("FailJob", "In", &[3], None)],
        };
        let mut p = pod("a", "Failed");
        p.0.status.as_mut().unwrap().init_container_statuses = Some(vec![ContainerStatus {
            name: "setup".into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        let m = failure_policy::match_pod(Some(&policy), &p.0);
        assert_eq!(
            m.fail_job_message.as_deref(),
            Some(
                "Container setup for pod ns/a failed with exit code 3 matching FailJob rule at index 0"
            )
        );
    }

    #[test]
    fn fail_job_rule_sets_failure_target_with_upstream_message() {
        let j = with_policy(
            running(job(Some(3), 2), 2),
            vec![exit_rule("FailJob", "In", &[42], None)],
        );
        let p = run(
            &j,
            &[
                pod("a", "Failed").exit("main", 42, 990),
                pod("b", "Running"),
            ],
        );
        let s = p.status.unwrap();
        let ft = find(conditions(&s), FAILURE_TARGET).unwrap();
        assert_eq!(ft.reason.as_deref(), Some(REASON_POD_FAILURE_POLICY));
        assert_eq!(
            ft.message.as_deref(),
            Some(
                "Container main for pod ns/a failed with exit code 42 matching FailJob rule at index 0"
            )
        );
        assert_eq!(p.outcome.failure_policy_actions.get("FailJob"), Some(&1));
        let mut f = uncounted(&s).1;
        f.sort();
        assert_eq!(f, vec!["a-uid", "b-uid"]);
    }

    #[test]
    fn pod_condition_fail_job_message() {
        let j = with_policy(
            running(job(Some(3), 1), 0),
            vec![condition_rule("FailJob", "DisruptionTarget")],
        );
        let p = run(
            &j,
            &[pod("a", "Failed").cond("DisruptionTarget", "True", t(5))],
        );
        let s = p.status.unwrap();
        assert_eq!(
            find(conditions(&s), FAILURE_TARGET)
                .unwrap()
                .message
                .as_deref(),
            Some("Pod ns/a has condition DisruptionTarget matching FailJob rule at index 0")
        );
    }

    #[test]
    fn ignored_failure_is_not_counted_but_loses_its_finalizer() {
        let mut j = with_policy(
            running(job(Some(3), 1), 0),
            vec![condition_rule("Ignore", "DisruptionTarget")],
        );
        spec(&mut j).backoff_limit = Some(0);
        let p = run(
            &j,
            &[pod("a", "Failed").cond("DisruptionTarget", "True", t(5))],
        );
        let s = status_after(&j, &p);
        assert!(uncounted(&s).1.is_empty());
        assert!(
            !has_cond(&s, FAILURE_TARGET),
            "ignored failures do not reach backoffLimit 0"
        );
        assert_eq!(names(&p.remove_finalizers), vec!["a"]);
        assert_eq!(p.outcome.failure_policy_actions.get("Ignore"), Some(&1));
    }

    #[test]
    fn pod_failure_policy_defaults_replacement_to_failed_pods_only() {
        let j = with_policy(
            running(job(Some(2), 1), 0),
            vec![exit_rule("Count", "In", &[1], None)],
        );
        let p = run(&j, &[pod("a", "Running").deleting()]);
        assert!(
            p.create.is_empty(),
            "a terminating pod is not replaced under policy Failed"
        );
        assert!(
            uncounted(&status_after(&j, &p)).1.is_empty(),
            "nor counted as failed"
        );
    }
}
