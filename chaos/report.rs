//! report.md: the figures of each mode's run and every violation found.

use std::fmt::Write as _;

use crate::Args;
use crate::driver::ModeResult;

pub fn markdown(args: &Args, results: &[ModeResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# jobkeeper chaos run\n");
    let _ = writeln!(
        s,
        "{} Jobs of ours (seed {}), a controller kill every {} s ({} planned), {} kube-apiserver \
         and {} etcd restart(s), a second writer at {}/s updating labels and annotations.\n",
        args.jobs,
        args.seed,
        args.kill_interval_s,
        args.kills,
        args.apiserver_restarts,
        args.etcd_restarts,
        args.writer_rate
    );
    let _ = writeln!(
        s,
        "Command: `jobkeeper-chaos {}`\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    figures(&mut s, results);
    for r in results {
        details(&mut s, r);
    }
    s
}

/// A figure's name and how to read it from a mode's result.
type Row = (&'static str, fn(&ModeResult) -> String);

fn figures(s: &mut String, results: &[ModeResult]) {
    let _ = write!(s, "| figure |");
    for r in results {
        let _ = write!(s, " {} |", r.mode);
    }
    let _ = write!(s, "\n|---|");
    for _ in results {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s);
    let rows: [Row; 22] = [
        ("controller kills (SIGKILL)", |r| r.kills.to_string()),
        ("kube-apiserver restarts", |r| {
            r.apiserver_restarts.to_string()
        }),
        ("etcd restarts", |r| r.etcd_restarts.to_string()),
        ("chaos phase (s)", |r| format!("{:.0}", r.chaos_s)),
        ("settling after it (s)", |r| format!("{:.0}", r.settle_s)),
        ("Jobs of ours", |r| r.jobs.to_string()),
        ("pods seen (all Jobs)", |r| r.pods.to_string()),
        ("second writer: updates done", |r| {
            r.writer_updates.to_string()
        }),
        ("second writer: 409s met", |r| {
            r.writer_conflicts.to_string()
        }),
        ("409s in the audit log (namespace)", |r| {
            r.audit_conflicts.to_string()
        }),
        ("409s answered to jobkeeper", |r| {
            r.jobkeeper_conflicts.to_string()
        }),
        ("422s on jobs/status (must be 0)", |r| {
            r.checks.status_422.to_string()
        }),
        ("statuses compared with the built-in's", |r| {
            r.checks.compared.to_string()
        }),
        ("of which driven unevenly (Suspended not compared)", |r| {
            r.checks.uneven.len().to_string()
        }),
        ("final mismatches (must be 0)", |r| {
            r.checks.mismatches.len().to_string()
        }),
        ("max observed over-count (must be 0)", |r| {
            r.checks.max_over_count.max(0).to_string()
        }),
        ("leaked tracking finalizers (must be 0)", |r| {
            r.checks.leaked_finalizers.len().to_string()
        }),
        ("duplicate pods (must be 0)", |r| {
            r.checks.duplicates.len().to_string()
        }),
        ("user fields changed (must be 0)", |r| {
            r.checks.user_fields_changed.len().to_string()
        }),
        ("deletion outcomes wrong (must be 0)", |r| {
            r.checks.deletion.len().to_string()
        }),
        ("Jobs unfinished (must be 0)", |r| {
            r.checks.unfinished.len().to_string()
        }),
        ("two writers at once (must be 0)", |r| {
            r.terms
                .as_ref()
                .map_or("–".into(), |_| r.checks.two_writers.len().to_string())
        }),
    ];
    for (name, value) in rows {
        let _ = write!(s, "| {name} |");
        for r in results {
            let _ = write!(s, " {} |", value(r));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s);
}

fn details(s: &mut String, r: &ModeResult) {
    let _ = writeln!(s, "## {}\n", r.mode);
    let _ = writeln!(
        s,
        "Verdict: {}\n",
        if r.checks.violations() == 0 {
            "pass"
        } else {
            "FAIL"
        }
    );
    if !r.audit_errors.is_empty() {
        let _ = writeln!(
            s,
            "409/422 answers in the run's namespace (audit log), by who, verb, resource:\n"
        );
        for (k, n) in &r.audit_errors {
            let _ = writeln!(s, "- `{k}`: {n}");
        }
        let _ = writeln!(s);
    }
    if let Some(t) = &r.terms {
        let _ = writeln!(
            s,
            "Writes by the replicas (audit log, by the replica each request impersonated with): {} terms, \
             each a run of writes by one process incarnation:\n",
            t.terms.len()
        );
        for (who, first, last, n) in &t.terms {
            let _ = writeln!(s, "- {who}: {n} writes, {first} – {last}");
        }
        let _ = writeln!(s);
    }
    let c = &r.checks;
    for (title, list) in [
        ("Mismatches", &c.mismatches),
        ("Driven unevenly (not violations)", &c.uneven),
        ("Over-counts", &c.over_counts),
        ("Leaked finalizers", &c.leaked_finalizers),
        ("Duplicate pods", &c.duplicates),
        ("User fields changed", &c.user_fields_changed),
        ("Deletions", &c.deletion),
        ("Unfinished", &c.unfinished),
        ("Two writers", &c.two_writers),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(s, "### {title} ({})\n", list.len());
        for item in list.iter().take(50) {
            let _ = writeln!(s, "- {item}");
        }
        let _ = writeln!(s);
    }
}

pub fn summary(results: &[ModeResult]) -> String {
    results
        .iter()
        .map(|r| {
            format!(
                "{}: {} kills, {} apiserver / {} etcd restarts, {} Jobs, {} pods, {} violations",
                r.mode,
                r.kills,
                r.apiserver_restarts,
                r.etcd_restarts,
                r.jobs,
                r.pods,
                r.checks.violations()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
