//! Table-driven planner cases. Every plan's status goes through [`validation_errors`], a
//! copy of the apiserver's status rules for Jobs with a custom managedBy.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{
    PodFailurePolicy, SuccessPolicy, SuccessPolicyRule, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, EnvVar,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::indexed::Intervals;
use super::status::*;
use super::testing::*;
use super::*;

// ---------------------------------------------------------------- first sync, creation

#[test]
fn new_job_creates_parallelism_pods_and_sets_start_time() {
    for (completions, parallelism, want) in [
        (Some(5), 2, 2),
        (Some(1), 3, 1),
        (None, 3, 3),
        (Some(0), 2, 0),
        (Some(4), 0, 0),
    ] {
        let j = job(completions, parallelism);
        let p = run(&j, &[]);
        assert_eq!(p.create.len(), want, "{completions:?}/{parallelism}");
        let s = status_after(&j, &p);
        assert_eq!(s.start_time, Some(Time(now())));
        assert_eq!(s.active.unwrap_or(0), want as i32);
        assert_eq!(s.ready, Some(0));
        assert_eq!(s.terminating, Some(0));
    }
}

#[test]
fn created_pod_carries_owner_labels_finalizer_and_generate_name() {
    let j = job(Some(1), 1);
    let p = run(&j, &[]);
    let pod = &p.create[0];
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
    let pod = &p.create[2];
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
fn indexed_job_recreates_lowest_missing_index() {
    let j = running(indexed_job(5, 3), 2);
    let pods = [pod("a", "Running").index(0), pod("b", "Running").index(3)];
    let p = run(&j, &pods);
    let idx: Vec<String> = p
        .create
        .iter()
        .map(|c| c.metadata.annotations.as_ref().unwrap()[pods::COMPLETION_INDEX].clone())
        .collect();
    assert_eq!(idx, vec!["1"]);
}

#[test]
fn indexed_job_skips_completed_indexes() {
    let mut j = running(indexed_job(5, 5), 0);
    st(&mut j).completed_indexes = Some("0,2".into());
    st(&mut j).succeeded = Some(2);
    let p = run(&j, &[]);
    let idx: Vec<String> = p
        .create
        .iter()
        .map(|c| c.metadata.annotations.as_ref().unwrap()[pods::COMPLETION_INDEX].clone())
        .collect();
    assert_eq!(idx, vec!["1", "3", "4"]);
}

#[test]
fn steady_running_job_plans_nothing() {
    let j = running(job(Some(3), 2), 2);
    let p = run(&j, &[pod("a", "Running"), pod("b", "Pending")]);
    assert!(p.is_noop(), "{p:#?}");
    assert!(p.status.is_none());
}

#[test]
fn ready_count_follows_pod_conditions() {
    let j = running(job(Some(3), 2), 2);
    let p = run(&j, &[pod("a", "Running").ready(), pod("b", "Running")]);
    assert_eq!(p.status.unwrap().ready, Some(1));
}

#[test]
fn creates_are_capped_at_500() {
    let j = job(Some(2000), 1000);
    let p = run(&j, &[]);
    assert_eq!(p.create.len(), 500);
    assert_eq!(p.status.unwrap().active, Some(500));
}

// ---------------------------------------------------------------- deletion order

#[test]
fn scale_down_deletes_least_advanced_pods_first() {
    let cases: Vec<(&str, Vec<P>, Vec<&str>)> = vec![
        (
            "unscheduled before scheduled",
            vec![pod("s", "Pending").node(), pod("u", "Pending")],
            vec!["u"],
        ),
        (
            "pending before running",
            vec![pod("r", "Running").node(), pod("p", "Pending").node()],
            vec!["p"],
        ),
        (
            "not ready before ready",
            vec![
                pod("rd", "Running").node().ready(),
                pod("nr", "Running").node(),
            ],
            vec!["nr"],
        ),
        (
            "newer before older",
            vec![
                pod("old", "Running").node().created(1),
                pod("new", "Running").node().created(5),
            ],
            vec!["new"],
        ),
        (
            "more restarts first",
            vec![
                pod("calm", "Running").node().restarts(0),
                pod("crashy", "Running").node().restarts(3),
            ],
            vec!["crashy"],
        ),
        (
            "ready for less time first",
            vec![
                pod("long", "Running").node().cond("Ready", "True", t(1)),
                pod("short", "Running").node().cond("Ready", "True", t(50)),
            ],
            vec!["short"],
        ),
    ];
    for (name, pods, want) in cases {
        let j = running(job(Some(10), 1), 2);
        let p = run(&j, &pods);
        assert_eq!(names(&p.delete), want, "{name}");
        assert!(p.create.is_empty(), "{name}");
        let s = p.status.unwrap();
        assert_eq!((s.active, s.terminating), (Some(1), Some(1)), "{name}");
    }
}

#[test]
fn parallelism_zero_deletes_every_active_pod() {
    let j = running(job(Some(3), 0), 2);
    let p = run(&j, &[pod("a", "Running").ready(), pod("b", "Running")]);
    assert_eq!(p.delete.len(), 2);
    let s = p.status.unwrap();
    assert_eq!((s.active, s.ready, s.terminating), (None, Some(0), Some(2)));
    assert!(p.remove_finalizers.is_empty());
}

#[test]
fn indexed_job_deletes_duplicate_invalid_and_out_of_range_pods() {
    let j = running(indexed_job(3, 3), 5);
    let pods = [
        pod("a0", "Running").index(0).node().ready(),
        pod("b0", "Pending").index(0),
        pod("c1", "Running").index(1),
        pod("d9", "Running").index(9),
        pod("none", "Running"),
        pod("bad", "Running").annotation(pods::COMPLETION_INDEX, "x"),
    ];
    let p = run(&j, &pods);
    let mut got = names(&p.delete);
    got.sort();
    assert_eq!(got, vec!["b0", "bad", "d9", "none"]);
    assert!(p.create.is_empty(), "deletes win over creates");
}

#[test]
fn deletes_win_over_creates_in_one_sync() {
    let j = running(indexed_job(2, 2), 2);
    let p = run(
        &j,
        &[pod("a", "Running").index(0), pod("b", "Running").index(0)],
    );
    assert_eq!(p.delete.len(), 1);
    assert!(p.create.is_empty());
}

// ---------------------------------------------------------------- tracking finished pods

#[test]
fn succeeded_pod_goes_to_uncounted_then_to_succeeded() {
    let j = running(job(Some(2), 2), 2);
    let pods = [pod("a", "Succeeded"), pod("b", "Running")];
    let p = run(&j, &pods);
    let s = p.status.clone().unwrap();
    assert_eq!(uncounted(&s).0, vec!["a-uid"]);
    assert_eq!(s.succeeded, None);
    assert_eq!(names(&p.remove_finalizers), vec!["a"]);
    assert_eq!(p.outcome.pods_finished.get("succeeded"), Some(&1));
    assert!(
        p.create.is_empty(),
        "one completion left and one pod running"
    );
    // Next plan: the finalizer is gone.
    let mut j2 = j.clone();
    j2.status = Some(s);
    let p2 = run(
        &j2,
        &[pod("a", "Succeeded").no_finalizer(), pod("b", "Running")],
    );
    let s2 = p2.status.unwrap();
    assert_eq!(s2.succeeded, Some(1));
    assert!(uncounted(&s2).0.is_empty());
    assert!(p2.remove_finalizers.is_empty());
}

#[test]
fn uncounted_pod_that_is_gone_is_counted() {
    let mut j = running(job(Some(3), 1), 0);
    st(&mut j).uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: Some(vec!["gone-uid".into()]),
        failed: Some(vec!["gone2-uid".into()]),
    });
    let p = run(&j, &[]);
    let s = p.status.unwrap();
    assert_eq!((s.succeeded, s.failed), (Some(1), Some(1)));
    assert_eq!(uncounted(&s), (vec![], vec![]));
}

#[test]
fn finalizer_removed_set_counts_as_no_finalizer() {
    let mut j = running(job(Some(3), 1), 1);
    st(&mut j).uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: Some(vec!["a-uid".into()]),
        failed: None,
    });
    let removed: HashSet<String> = ["a-uid".to_string()].into();
    let p = plan_with(
        &j,
        &[pod("a", "Succeeded"), pod("b", "Running")],
        &[],
        &removed,
        &BackoffRecord::default(),
    );
    let s = p.status.unwrap();
    assert_eq!(s.succeeded, Some(1));
    assert!(p.remove_finalizers.is_empty());
}

#[test]
fn uncounted_pod_still_holding_finalizer_is_not_added_twice() {
    let mut j = running(job(Some(3), 1), 1);
    st(&mut j).uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: Some(vec!["a-uid".into()]),
        failed: None,
    });
    let p = run(&j, &[pod("a", "Succeeded"), pod("b", "Running")]);
    assert!(p.status.is_none(), "{:#?}", p.status);
    assert_eq!(names(&p.remove_finalizers), vec!["a"]);
}

#[test]
fn failed_pod_is_counted_once_and_replaced_after_backoff() {
    let j = running(job(Some(1), 1), 1);
    let pods = [pod("a", "Failed").exit("main", 1, 995)];
    let p = run(&j, &pods);
    let s = p.status.clone().unwrap();
    assert_eq!(uncounted(&s).1, vec!["a-uid"]);
    assert_eq!(s.active, None);
    assert!(
        p.create.is_empty(),
        "backoff of 10 s after the failure at 995"
    );
    assert_eq!(p.requeue_after, Some(Duration::from_secs(5)));
    assert_eq!(p.backoff.failures_after_last_success, 1);
    assert_eq!(p.backoff.last_failure_time, Some(t(995)));
    // Once the backoff has passed, the replacement is created; the failure is not recounted.
    let late = [pod("a", "Failed").exit("main", 1, 900)];
    let p2 = run(&j, &late);
    assert_eq!(p2.create.len(), 1);
}

#[test]
fn pod_backoff_delays_creation_and_requeues() {
    let j = running(job(Some(1), 1), 0);
    let cases = [
        (1, 995, 5),
        (2, 990, 10),
        (3, 1000, 40),
        (7, 700, 300),
        (2, 900, 0),
    ];
    for (failures, last, wait) in cases {
        let b = BackoffRecord {
            failures_after_last_success: failures,
            last_failure_time: Some(t(last)),
            ..BackoffRecord::default()
        };
        let p = plan_with(&j, &[], &[], &HashSet::new(), &b);
        if wait == 0 {
            assert_eq!(p.create.len(), 1, "{failures}");
        } else {
            assert!(p.create.is_empty(), "{failures}");
            assert_eq!(
                p.requeue_after,
                Some(Duration::from_secs(wait)),
                "{failures}"
            );
        }
    }
}

#[test]
fn backoff_never_writes_active_zero_while_pods_run() {
    // Upstream issue 139428: during backoff the built-in controller wrote active=0.
    let j = running(job(Some(3), 2), 1);
    let b = BackoffRecord {
        failures_after_last_success: 2,
        last_failure_time: Some(t(995)),
        ..BackoffRecord::default()
    };
    let p = plan_with(&j, &[pod("a", "Running").ready()], &[], &HashSet::new(), &b);
    let s = status_after(&j, &p);
    assert_eq!(s.active, Some(1));
    assert!(p.create.is_empty());
}

#[test]
fn a_success_resets_the_backoff_record() {
    let j = running(job(Some(3), 1), 0);
    let b = BackoffRecord {
        failures_after_last_success: 3,
        last_failure_time: Some(t(990)),
        ..BackoffRecord::default()
    };
    let pods = [
        pod("s", "Succeeded").exit("main", 0, 995),
        pod("f", "Failed").exit("main", 1, 999),
    ];
    let p = plan_with(&j, &pods, &[], &HashSet::new(), &b);
    assert_eq!(p.backoff.failures_after_last_success, 1);
    assert_eq!(p.backoff.last_failure_time, Some(t(999)));
}

#[test]
fn uncounted_list_is_capped_at_500() {
    let j = running(job(Some(2000), 1), 0);
    let pods: Vec<P> = (0..700)
        .map(|i| pod(&format!("p{i:04}"), "Succeeded"))
        .collect();
    let p = run(&j, &pods);
    let s = p.status.unwrap();
    assert_eq!(uncounted(&s).0.len(), 500);
    assert_eq!(p.remove_finalizers.len(), 500);
}

#[test]
fn deleted_pod_counts_as_failed_unless_replacement_policy_failed() {
    for (policy, failed) in [
        (None, true),
        (Some("TerminatingOrFailed"), true),
        (Some("Failed"), false),
    ] {
        let mut j = running(job(Some(2), 1), 0);
        spec(&mut j).pod_replacement_policy = policy.map(String::from);
        let p = run(&j, &[pod("a", "Running").deleting()]);
        let s = status_after(&j, &p);
        assert_eq!(!uncounted(&s).1.is_empty(), failed, "{policy:?}");
        assert_eq!(s.terminating, Some(1));
        // Failed: the terminating pod blocks its replacement.
        assert_eq!(p.create.is_empty(), policy == Some("Failed"), "{policy:?}");
    }
}

#[test]
fn indexed_succeeded_pod_goes_to_completed_indexes() {
    let j = running(indexed_job(4, 2), 2);
    let pods = [
        pod("a", "Succeeded").index(1),
        pod("b", "Running").index(0),
        pod("c", "Succeeded").index(3),
    ];
    let p = run(&j, &pods);
    let s = p.status.clone().unwrap();
    assert_eq!(s.completed_indexes.as_deref(), Some("1,3"));
    assert_eq!(s.succeeded, Some(2));
    assert!(uncounted(&s).0.is_empty());
    let mut rm = names(&p.remove_finalizers);
    rm.sort();
    assert_eq!(rm, vec!["a", "c"]);
}

#[test]
fn indexed_pod_out_of_range_is_not_counted() {
    let j = running(indexed_job(2, 2), 0);
    let pods = [pod("a", "Succeeded").index(5), pod("b", "Failed").index(7)];
    let p = run(&j, &pods);
    let s = status_after(&j, &p);
    assert_eq!(s.completed_indexes, None);
    assert!(uncounted(&s).1.is_empty());
    assert_eq!(p.remove_finalizers.len(), 2);
}

// ---------------------------------------------------------------- completion

#[test]
fn job_completes_in_two_steps() {
    let mut sim = Sim::new(job(Some(2), 2));
    sim.apply(&sim.plan(), 4);
    assert_eq!(sim.pods.len(), 2);
    sim.set_phase(0, "Succeeded");
    sim.set_phase(1, "Succeeded");
    let p = sim.plan();
    let s = p.status.clone().unwrap();
    assert!(has_cond(&s, SUCCESS_CRITERIA_MET));
    assert!(!has_cond(&s, COMPLETE));
    sim.apply(&p, 4);
    let p2 = sim.plan();
    let s2 = p2.status.clone().unwrap();
    assert!(has_cond(&s2, COMPLETE));
    let c = find(conditions(&s2), COMPLETE).unwrap();
    assert_eq!(c.reason.as_deref(), Some(REASON_COMPLETIONS_REACHED));
    assert_eq!(c.message.as_deref(), Some(MESSAGE_COMPLETIONS_REACHED));
    assert_eq!(s2.completion_time, c.last_transition_time);
    assert_eq!(s2.succeeded, Some(2));
    assert_eq!(
        p2.events,
        vec![JobEvent {
            type_: EventType::Normal,
            reason: "Completed".into(),
            message: "Job completed".into()
        }]
    );
    assert_eq!(
        p2.outcome.finished,
        Some(("succeeded".into(), REASON_COMPLETIONS_REACHED.into()))
    );
    sim.apply(&p2, 4);
    assert!(sim.plan().is_noop());
}

#[test]
fn job_without_completions_finishes_after_first_success_and_no_active() {
    let j = running(job(None, 3), 3);
    let p = run(
        &j,
        &[
            pod("a", "Succeeded"),
            pod("b", "Running"),
            pod("c", "Running"),
        ],
    );
    assert!(p.create.is_empty() && p.delete.is_empty());
    let s = p.status.unwrap();
    assert!(!has_cond(&s, SUCCESS_CRITERIA_MET));
    let mut j2 = running(job(None, 3), 0);
    st(&mut j2).succeeded = Some(1);
    let p2 = run(&j2, &[pod("b", "Failed").no_finalizer()]);
    let s2 = p2.status.unwrap();
    assert!(has_cond(&s2, SUCCESS_CRITERIA_MET));
}

#[test]
fn success_criteria_met_deletes_remaining_pods_before_complete() {
    let mut j = running(job(Some(1), 2), 1);
    st(&mut j).succeeded = Some(1);
    st(&mut j).conditions = Some(vec![cond(
        SUCCESS_CRITERIA_MET,
        REASON_COMPLETIONS_REACHED,
        MESSAGE_COMPLETIONS_REACHED,
    )]);
    let p = run(&j, &[pod("b", "Running")]);
    assert_eq!(names(&p.delete), vec!["b"]);
    let s = p.status.unwrap();
    assert!(!has_cond(&s, COMPLETE));
    assert_eq!((s.active, s.terminating), (None, Some(1)));
}

#[test]
fn too_many_succeeded_pods_is_reported() {
    let mut j = running(job(Some(1), 2), 0);
    st(&mut j).succeeded = Some(2);
    st(&mut j).conditions = Some(vec![cond(
        SUCCESS_CRITERIA_MET,
        REASON_COMPLETIONS_REACHED,
        MESSAGE_COMPLETIONS_REACHED,
    )]);
    let p = run(&j, &[]);
    let reasons: Vec<&str> = p.events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, vec!["TooManySucceededPods", "Completed"]);
}

#[test]
fn finished_job_only_strips_finalizers() {
    let mut j = running(job(Some(1), 1), 0);
    st(&mut j).conditions = Some(vec![
        cond(SUCCESS_CRITERIA_MET, "a", "b"),
        cond(COMPLETE, "a", "b"),
    ]);
    st(&mut j).completion_time = Some(Time(t(0)));
    let b = BackoffRecord {
        failures_after_last_success: 2,
        last_failure_time: Some(t(1)),
        ..BackoffRecord::default()
    };
    let p = plan_with(
        &j,
        &[pod("a", "Running"), pod("b", "Failed").no_finalizer()],
        &[],
        &HashSet::new(),
        &b,
    );
    assert_eq!(names(&p.remove_finalizers), vec!["a"]);
    assert!(p.status.is_none() && p.create.is_empty() && p.delete.is_empty());
    assert_eq!(p.backoff, BackoffRecord::default());
}

// ---------------------------------------------------------------- failure

#[test]
fn backoff_limit_exceeded_fails_the_job_in_steps() {
    let mut j = running(job(Some(5), 2), 2);
    spec(&mut j).backoff_limit = Some(1);
    st(&mut j).failed = Some(1);
    let pods = [pod("f", "Failed"), pod("r", "Running").ready()];
    let p = run(&j, &pods);
    let s = p.status.clone().unwrap();
    let ft = find(conditions(&s), FAILURE_TARGET).unwrap();
    assert_eq!(ft.reason.as_deref(), Some(REASON_BACKOFF_LIMIT));
    assert_eq!(ft.message.as_deref(), Some(MESSAGE_BACKOFF_LIMIT));
    let (_, mut f) = uncounted(&s);
    f.sort();
    assert_eq!(
        f,
        vec!["f-uid", "r-uid"],
        "the running pod counts as failed"
    );
    assert!(
        p.delete.is_empty(),
        "the running pod is deleted once counted"
    );
    assert_eq!(s.active, Some(1), "real active count");
    assert!(!has_cond(&s, FAILED));
}

#[test]
fn failure_target_job_deletes_counted_pods_then_fails() {
    let mut sim = Sim::new(job(Some(5), 2));
    spec(&mut sim.job).backoff_limit = Some(0);
    sim.apply(&sim.plan(), 4);
    sim.set_phase(0, "Failed");
    let plans = sim.settle();
    let s = sim.status();
    assert!(has_cond(&s, FAILED), "{s:#?}");
    assert_eq!(s.failed, Some(2));
    assert_eq!((s.active, s.terminating), (None, Some(0)));
    assert!(sim.pods.iter().all(|p| p.metadata.finalizers.is_none()));
    let last = plans.iter().find(|p| p.outcome.finished.is_some()).unwrap();
    assert_eq!(
        last.events[0],
        JobEvent {
            type_: EventType::Warning,
            reason: REASON_BACKOFF_LIMIT.into(),
            message: MESSAGE_BACKOFF_LIMIT.into()
        }
    );
}

#[test]
fn on_failure_restarts_count_towards_backoff_limit() {
    for (limit, restarts, fails) in [(0, 1, true), (0, 0, false), (3, 2, false), (3, 3, true)] {
        let mut j = running(job(Some(1), 1), 1);
        spec(&mut j).template.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
        spec(&mut j).backoff_limit = Some(limit);
        let p = run(&j, &[pod("a", "Running").restarts(restarts)]);
        let s = status_after(&j, &p);
        assert_eq!(has_cond(&s, FAILURE_TARGET), fails, "{limit}/{restarts}");
    }
}

#[test]
fn active_deadline_fails_job_or_requeues() {
    for (deadline, fails, requeue) in [
        (2000, false, Some(1000)),
        (1000, true, None),
        (10, true, None),
    ] {
        let mut j = running(job(Some(1), 1), 1);
        spec(&mut j).active_deadline_seconds = Some(deadline);
        let p = run(&j, &[pod("a", "Running")]);
        let s = status_after(&j, &p);
        assert_eq!(has_cond(&s, FAILURE_TARGET), fails, "{deadline}");
        if fails {
            assert_eq!(
                find(conditions(&s), FAILURE_TARGET)
                    .unwrap()
                    .reason
                    .as_deref(),
                Some(REASON_DEADLINE)
            );
        }
        assert_eq!(
            p.requeue_after,
            requeue.map(Duration::from_secs),
            "{deadline}"
        );
    }
}

#[test]
fn active_deadline_is_not_checked_while_suspended() {
    let mut j = running(job(Some(1), 1), 0);
    spec(&mut j).active_deadline_seconds = Some(1);
    spec(&mut j).suspend = Some(true);
    let p = run(&j, &[]);
    assert!(!has_cond(&status_after(&j, &p), FAILURE_TARGET));
}

#[test]
fn existing_failure_target_becomes_failed_when_pods_are_gone() {
    let mut j = running(job(Some(1), 1), 0);
    st(&mut j).failed = Some(7);
    st(&mut j).conditions = Some(vec![cond(
        FAILURE_TARGET,
        REASON_BACKOFF_LIMIT,
        MESSAGE_BACKOFF_LIMIT,
    )]);
    let p = run(&j, &[]);
    let s = p.status.unwrap();
    let f = find(conditions(&s), FAILED).unwrap();
    assert_eq!(f.reason.as_deref(), Some(REASON_BACKOFF_LIMIT));
    assert_eq!(f.last_transition_time, Some(Time(now())));
    assert!(s.completion_time.is_none());
    assert_eq!(
        p.outcome.finished,
        Some(("failed".into(), REASON_BACKOFF_LIMIT.into()))
    );
}

#[test]
fn failed_waits_for_terminating_pods() {
    let mut j = running(job(Some(1), 1), 0);
    st(&mut j).conditions = Some(vec![cond(
        FAILURE_TARGET,
        REASON_BACKOFF_LIMIT,
        MESSAGE_BACKOFF_LIMIT,
    )]);
    let p = run(&j, &[pod("a", "Running").deleting().no_finalizer()]);
    let s = p.status.unwrap();
    assert!(!has_cond(&s, FAILED));
    assert_eq!(s.terminating, Some(1));
}

// ---------------------------------------------------------------- suspend / resume

#[test]
fn job_created_suspended_has_no_start_time_and_no_pods() {
    let mut j = job(Some(2), 2);
    spec(&mut j).suspend = Some(true);
    let p = run(&j, &[]);
    assert!(p.create.is_empty());
    let s = p.status.unwrap();
    assert!(s.start_time.is_none());
    let c = find(conditions(&s), SUSPENDED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref(), c.message.as_deref()),
        ("True", Some("JobSuspended"), Some("Job suspended"))
    );
    assert_eq!(p.events[0].reason, "Suspended");
}

#[test]
fn suspending_running_job_deletes_pods_without_counting_them() {
    let mut j = running(job(Some(3), 2), 2);
    spec(&mut j).suspend = Some(true);
    let p = run(&j, &[pod("a", "Running").ready(), pod("b", "Pending")]);
    assert_eq!(names(&p.delete), vec!["b", "a"]);
    let s = p.status.unwrap();
    assert_eq!(
        (s.active, s.ready, s.terminating, s.failed),
        (None, Some(0), Some(2), None)
    );
    assert_eq!(
        s.start_time, None,
        "the built-in controller clears startTime once no pod of a suspended Job runs"
    );
    assert!(has_cond(&s, SUSPENDED));
}

#[test]
fn resuming_resets_start_time_and_emits_resumed() {
    let mut j = running(job(Some(3), 2), 0);
    spec(&mut j).active_deadline_seconds = Some(2000);
    st(&mut j).conditions = Some(vec![new_condition(
        SUSPENDED,
        "True",
        "JobSuspended",
        "Job suspended",
        t(0),
    )]);
    let p = run(&j, &[]);
    let s = p.status.unwrap();
    assert_eq!(s.start_time, Some(Time(now())));
    let c = find(conditions(&s), SUSPENDED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref(), c.message.as_deref()),
        ("False", Some("JobResumed"), Some("Job resumed"))
    );
    assert_eq!(p.events[0].reason, "Resumed");
    assert_eq!(p.create.len(), 2);
    assert_eq!(
        p.requeue_after,
        Some(Duration::from_secs(2000)),
        "the deadline counts from the resume"
    );
}

#[test]
fn unsuspended_job_without_suspended_condition_adds_none() {
    let j = job(Some(1), 1);
    let s = run(&j, &[]).status.unwrap();
    assert!(find(conditions(&s), SUSPENDED).is_none());
}

// ---------------------------------------------------------------- adoption, deletion

#[test]
fn matching_orphan_is_adopted_and_unmatching_pod_released() {
    let j = running(job(Some(3), 2), 1);
    let pods = [pod("mine", "Running"), pod("stray", "Running").unlabelled()];
    let orphans = [
        pod("orphan", "Running").orphan(),
        pod("gone", "Running").orphan().deleting(),
    ];
    let p = plan_with(
        &j,
        &pods,
        &orphans,
        &HashSet::new(),
        &BackoffRecord::default(),
    );
    assert_eq!(names(&p.adopt), vec!["orphan"]);
    assert_eq!(names(&p.release), vec!["stray"]);
    assert!(p.create.is_empty(), "the adopted pod fills the second slot");
    assert_eq!(p.status.unwrap().active, Some(2));
}

#[test]
fn adopted_finished_orphan_is_counted() {
    let j = running(job(Some(3), 1), 1);
    let orphans = [pod("orphan", "Succeeded").orphan()];
    let p = plan_with(
        &j,
        &[pod("a", "Running")],
        &orphans,
        &HashSet::new(),
        &BackoffRecord::default(),
    );
    assert_eq!(uncounted(&p.status.unwrap()).0, vec!["orphan-uid"]);
}

#[test]
fn deleted_job_counts_finished_pods_and_strips_all_finalizers() {
    let mut j = running(job(Some(3), 2), 2);
    j.metadata.deletion_timestamp = Some(Time(t(999)));
    let p = run(&j, &[pod("a", "Running"), pod("b", "Succeeded")]);
    assert!(p.create.is_empty() && p.delete.is_empty());
    let mut rm = names(&p.remove_finalizers);
    rm.sort();
    assert_eq!(rm, vec!["a", "b"]);
    assert_eq!(uncounted(&p.status.unwrap()).0, vec!["b-uid"]);
}

// ---------------------------------------------------------------- crash safety

/// Every prefix of every plan, re-planned from, ends with the same counts.
#[test]
fn partial_plans_never_lose_or_double_count_pods() {
    for cut in 0..=4 {
        let mut sim = Sim::new(job(Some(4), 3));
        spec(&mut sim.job).backoff_limit = Some(10);
        sim.apply(&sim.plan(), 4);
        sim.set_phase(0, "Succeeded");
        sim.set_phase(1, "Failed");
        let p = sim.plan();
        sim.apply(&p, cut);
        let p2 = sim.plan();
        sim.apply(&p2, cut.min(3));
        sim.settle();
        let s = sim.status();
        assert_eq!(s.succeeded, Some(1), "cut {cut}");
        assert_eq!(s.failed, Some(1), "cut {cut}");
        assert_eq!(uncounted(&s), (vec![], vec![]), "cut {cut}");
    }
}

#[test]
fn failing_job_counts_each_active_pod_once_whatever_the_cut() {
    for cut in 0..=4 {
        let mut sim = Sim::new(job(Some(4), 3));
        spec(&mut sim.job).backoff_limit = Some(0);
        sim.apply(&sim.plan(), 4);
        sim.set_phase(0, "Failed");
        for _ in 0..3 {
            let p = sim.plan();
            sim.apply(&p, cut);
        }
        sim.settle();
        let s = sim.status();
        assert!(has_cond(&s, FAILED), "cut {cut}");
        assert_eq!(s.failed, Some(3), "cut {cut}");
    }
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
fn status_is_none_when_nothing_changed() {
    let mut sim = Sim::new(job(Some(2), 2));
    sim.apply(&sim.plan(), 4);
    let p = sim.plan();
    assert!(p.is_noop(), "{p:#?}");
}

// ---------------------------------------------------------------- podFailurePolicy

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

// ---------------------------------------------------------------- backoffLimitPerIndex

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
    let ann = p.create[0].metadata.annotations.clone().unwrap();
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
    for c in &p.create {
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
    let ann = p.create[0].metadata.annotations.clone().unwrap();
    assert_eq!(ann[pods::INDEX_FAILURE_COUNT], "0");
    assert_eq!(ann[pods::INDEX_IGNORED_FAILURE_COUNT], "1");
}

// ---------------------------------------------------------------- successPolicy

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

/// A grid of Jobs and pod mixes: every plan must pass validation, never create and delete
/// at once, and never plan more than 500 of either.
#[test]
fn grid_of_jobs_always_yields_valid_plans() {
    let phases = ["Pending", "Running", "Succeeded", "Failed"];
    let mut checked = 0;
    for indexed in [false, true] {
        for completions in [1, 3] {
            for parallelism in [0, 1, 3] {
                for mix in 0..64u32 {
                    let mut j = if indexed {
                        running(indexed_job(completions, parallelism), 0)
                    } else {
                        running(job(Some(completions), parallelism), 0)
                    };
                    spec(&mut j).backoff_limit = Some(1);
                    let pods: Vec<P> = (0..3)
                        .map(|n| {
                            let mut p =
                                pod(&format!("p{n}"), phases[((mix >> (2 * n)) & 3) as usize])
                                    .index(n);
                            if mix % 5 == 0 {
                                p = p.deleting();
                            }
                            p
                        })
                        .collect();
                    let p = run(&j, &pods);
                    assert!(p.create.is_empty() || p.delete.is_empty());
                    assert!(p.create.len() <= 500 && p.delete.len() <= 500);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 768);
}
