//! API cost from the apiserver's audit log (Metadata level, one event per request at
//! ResponseComplete): each request is charged to the run whose namespace it touched, if
//! the identity is that run's controller and it arrived inside the run's window.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::jiff::Timestamp;

use crate::run::RunResult;
use crate::shared::AuditEvent;

pub fn user_of(side: &str) -> &'static str {
    match side {
        "kcm" => "system:serviceaccount:kube-system:job-controller",
        "jobkeeper" => "system:serviceaccount:jobkeeper-system:jobkeeper",
        _ => "system:serviceaccount:jobkeeper-system:jobkeeper-bench-ceiling",
    }
}

pub fn attribute(log: &Path, runs: &mut [RunResult]) -> anyhow::Result<()> {
    let file = std::fs::File::open(log).with_context(|| format!("opening {}", log.display()))?;
    struct Window {
        run: usize,
        user: &'static str,
        start: Timestamp,
        end: Timestamp,
    }
    let windows: Vec<Window> = runs
        .iter()
        .enumerate()
        .map(|(run, r)| {
            Ok(Window {
                run,
                user: user_of(&r.side),
                start: r.start_wall.parse()?,
                end: r.end_wall.parse()?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let by_namespace: HashMap<String, usize> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| (r.namespace.clone(), i))
        .collect();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let Ok(event) = serde_json::from_str::<AuditEvent>(&line) else {
            continue;
        };
        if event.stage != "ResponseComplete" && event.stage != "Panic" {
            continue;
        }
        let Some(object) = event.object_ref else {
            continue;
        };
        let resource = match (&object.resource, &object.subresource) {
            (Some(r), Some(s)) => format!("{r}/{s}"),
            (Some(r), None) => r.clone(),
            _ => continue,
        };
        let key = format!("{} {resource}", event.verb);
        let at = event.request_received_timestamp;
        let code = event.response_status.and_then(|s| s.code).unwrap_or(0);
        match object
            .namespace
            .as_deref()
            .and_then(|ns| by_namespace.get(ns))
        {
            Some(&i) => {
                let w = &windows[i];
                if event.user.username != w.user || at < w.start || at > w.end {
                    continue;
                }
                let run = &mut runs[w.run];
                *run.api.entry(key.clone()).or_default() += 1;
                if code >= 400 {
                    *run.api_errors.entry(format!("{key} {code}")).or_default() += 1;
                }
            }
            None if object.namespace.is_none() => {
                for w in &windows {
                    if event.user.username == w.user && at >= w.start && at <= w.end {
                        *runs[w.run].api_cluster.entry(key.clone()).or_default() += 1;
                    }
                }
            }
            None => {}
        }
    }
    Ok(())
}
