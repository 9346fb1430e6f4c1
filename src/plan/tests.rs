//! Whole-sync properties: whatever the Job and its pods, plans are valid, deterministic
//! and safe to apply in part. The cases for one stage sit next to it.

use crate::plan::status::*;
use crate::plan::testing::*;

#[test]
fn steady_running_job_plans_nothing() {
    let j = running(job(Some(3), 2), 2);
    let p = run(&j, &[pod("a", "Running"), pod("b", "Pending")]);
    assert!(p.is_noop(), "{p:#?}");
    assert!(p.status.is_none());
}

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
fn status_is_none_when_nothing_changed() {
    let mut sim = Sim::new(job(Some(2), 2));
    sim.apply(&sim.plan(), 4);
    let p = sim.plan();
    assert!(p.is_noop(), "{p:#?}");
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
