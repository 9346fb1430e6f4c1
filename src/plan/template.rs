//! The pod a Job asks for: its template plus the controller ownerReference, the tracking
//! finalizer and, for Indexed Jobs, the completion index (annotation, label, hostname,
//! generateName, JOB_COMPLETION_INDEX) and per-index failure counts.

use k8s_openapi::api::batch::v1::{Job, PodFailurePolicy};
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::pods::{self, COMPLETION_INDEX, INDEX_FAILURE_COUNT, INDEX_IGNORED_FAILURE_COUNT};
use super::{TRACKING_FINALIZER, failure_policy};

/// Generated names get 5 random characters; names are at most 63.
const MAX_GENERATE_NAME_PREFIX: usize = 58;
const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// Per-index failure counts to carry to the replacement pod (backoffLimitPerIndex).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexFailureCounts {
    pub failed: i32,
    pub ignored: i32,
}

impl IndexFailureCounts {
    /// What a replacement pod carries: the replaced pod's counts plus its own failure
    /// (ignored failures counted apart).
    pub fn after(policy: Option<&PodFailurePolicy>, replaced: Option<&Pod>) -> Self {
        let Some(p) = replaced else {
            return Self::default();
        };
        let mut counts = Self {
            failed: pods::index_failure_count(p),
            ignored: pods::index_ignored_failure_count(p),
        };
        if failure_policy::match_pod(policy, p).counts {
            counts.failed = counts.failed.saturating_add(1);
        } else {
            counts.ignored = counts.ignored.saturating_add(1);
        }
        counts
    }
}

pub fn generate_name(job_name: &str, index: Option<i32>) -> String {
    let Some(index) = index else {
        return format!("{job_name}-");
    };
    let suffix = format!("-{index}-");
    let mut prefix = format!("{job_name}{suffix}");
    if prefix.len() > MAX_GENERATE_NAME_PREFIX {
        let mut keep = MAX_GENERATE_NAME_PREFIX - suffix.len();
        while !job_name.is_char_boundary(keep) {
            keep -= 1;
        }
        prefix = format!("{}{suffix}", &job_name[..keep]);
    }
    prefix
}

/// Builds the pod to create. The template's labels already hold the selector labels the
/// apiserver generated (controller-uid, job-name and their batch.kubernetes.io forms).
pub fn build_pod(job: &Job, index: Option<i32>, failure_counts: Option<IndexFailureCounts>) -> Pod {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    let mut annotations = template_meta.annotations.unwrap_or_default();
    let mut finalizers = template_meta.finalizers.unwrap_or_default();
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.to_string());
    }
    if let Some(index) = index {
        annotations.insert(COMPLETION_INDEX.to_string(), index.to_string());
        labels.insert(COMPLETION_INDEX.to_string(), index.to_string());
        spec.hostname = Some(format!("{job_name}-{index}"));
        for c in spec.init_containers.iter_mut().flatten() {
            add_index_env(c);
        }
        for c in spec.containers.iter_mut() {
            add_index_env(c);
        }
        if let Some(counts) = failure_counts {
            annotations.insert(INDEX_FAILURE_COUNT.to_string(), counts.failed.to_string());
            if counts.ignored > 0 {
                annotations.insert(
                    INDEX_IGNORED_FAILURE_COUNT.to_string(),
                    counts.ignored.to_string(),
                );
            }
        }
    }
    let owner = OwnerReference {
        api_version: "batch/v1".to_string(),
        kind: "Job".to_string(),
        name: job_name.clone(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(&job_name, index)),
            namespace: job.metadata.namespace.clone(),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// JOB_COMPLETION_INDEX from the index label (the PodIndexLabel feature is GA, so
/// upstream points the fieldRef at the label), unless the container sets it already.
fn add_index_env(container: &mut Container) {
    let env = container.env.get_or_insert_with(Vec::new);
    if env.iter().any(|e| e.name == INDEX_ENV) {
        return;
    }
    env.push(EnvVar {
        name: INDEX_ENV.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: format!("metadata.labels['{COMPLETION_INDEX}']"),
            }),
            ..EnvVarSource::default()
        }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::core::v1::{Container, EnvVar};

    use crate::plan::testing::*;
    use crate::plan::{TRACKING_FINALIZER, pods};

    #[test]
    fn generate_name_truncates_job_part_to_keep_prefix_within_58() {
        assert_eq!(generate_name("pi", None), "pi-");
        assert_eq!(generate_name("pi", Some(3)), "pi-3-");
        let long = "a".repeat(63);
        let name = generate_name(&long, Some(12));
        assert_eq!(name.len(), 58);
        assert!(name.ends_with("a-12-"));
        let exact = "b".repeat(55);
        assert_eq!(generate_name(&exact, Some(1)), format!("{exact}-1-"));
        assert_eq!(generate_name(&"b".repeat(56), Some(1)).len(), 58);
    }

    #[test]
    fn created_pod_carries_owner_labels_finalizer_and_generate_name() {
        let j = job(Some(1), 1);
        let p = run(&j, &[]);
        let pod = &built(&j, &p)[0];
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-"));
        assert!(pod.metadata.name.is_none());
        assert_eq!(pod.metadata.labels.as_ref(), Some(&labels()));
        assert_eq!(
            pod.metadata.finalizers.as_deref(),
            Some(&[TRACKING_FINALIZER.to_string()][..])
        );
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("Job", JOB_UID, Some(true), Some(true))
        );
        assert!(pod.metadata.annotations.is_none());
    }

    #[test]
    fn indexed_pod_gets_index_annotation_label_hostname_and_env() {
        let mut j = indexed_job(3, 3);
        spec(&mut j).template.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: "init".into(),
            ..Default::default()
        }]);
        spec(&mut j)
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers
            .push(Container {
                name: "custom".into(),
                env: Some(vec![EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: Some("7".into()),
                    value_from: None,
                }]),
                ..Default::default()
            });
        let p = run(&j, &[]);
        assert_eq!(p.create.len(), 3);
        let pod = &built(&j, &p)[2];
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[pods::COMPLETION_INDEX],
            "2"
        );
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[pods::COMPLETION_INDEX],
            "2"
        );
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-2-"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("pi-2"));
        let env_of = |c: &Container| c.env.clone().unwrap_or_default();
        let main = env_of(&spec.containers[0]);
        assert_eq!(main.len(), 1);
        assert_eq!(
            main[0]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.labels['batch.kubernetes.io/job-completion-index']"
        );
        assert_eq!(env_of(&spec.init_containers.as_ref().unwrap()[0]).len(), 1);
        assert_eq!(env_of(&spec.containers[1])[0].value.as_deref(), Some("7"));
    }

    #[test]
    fn index_failure_counts_at_the_int32_limit_saturate() {
        let p = pod("a", "Failed")
            .index(0)
            .annotation(pods::INDEX_FAILURE_COUNT, "2147483647")
            .annotation(pods::INDEX_IGNORED_FAILURE_COUNT, "2147483647");
        let counts = IndexFailureCounts::after(None, Some(&p.0));
        assert_eq!((counts.failed, counts.ignored), (i32::MAX, i32::MAX));
        let ignore = with_policy(job(Some(1), 1), vec![exit_rule("Ignore", "In", &[1], None)]);
        let p = p.exit("main", 1, 50);
        let policy = ignore.spec.as_ref().unwrap().pod_failure_policy.as_ref();
        let counts = IndexFailureCounts::after(policy, Some(&p.0));
        assert_eq!((counts.failed, counts.ignored), (i32::MAX, i32::MAX));
    }
}
