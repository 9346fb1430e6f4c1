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
