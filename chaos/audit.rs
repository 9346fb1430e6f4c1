//! What the apiserver's audit log (Metadata level, one event per request) says about the
//! run: rejected status writes (422), conflicts (409), and with two replicas, which
//! process made each write (the replica's kubeconfig impersonates jobkeeper's identity
//! with `replica=<incarnation>` as user extra; in the cluster, the pod's source IP).

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::jiff::Timestamp;

use crate::shared::AuditEvent;

pub const JOBKEEPER_USER: &str = "system:serviceaccount:jobkeeper-system:jobkeeper";
pub const KCM_JOB_CONTROLLER: &str = "system:serviceaccount:kube-system:job-controller";
pub const REPLICA_EXTRA: &str = "replica";

/// One write to the run's namespace by a jobkeeper process.
#[derive(Debug, Clone)]
pub struct Write {
    pub at: Timestamp,
    /// The replica incarnation (two-replica mode), else "".
    pub replica: String,
}

#[derive(Debug, Default)]
pub struct Audit {
    /// "<who> <verb> <resource> <code>" → count, for 409 and 422 answers.
    pub errors: BTreeMap<String, u64>,
    /// 422 answers to writes of jobs/status, by anyone.
    pub status_422: u64,
    /// 409 answers in the run's namespace, by anyone.
    pub conflicts: u64,
    /// Writes (create, update, patch, delete) by jobkeeper to the run's namespace, in order.
    pub writes: Vec<Write>,
}

fn who(event: &AuditEvent) -> (&str, String) {
    match &event.impersonated_user {
        Some(u) => (
            u.username.as_str(),
            u.extra
                .get(REPLICA_EXTRA)
                .and_then(|v| v.first())
                .cloned()
                .unwrap_or_default(),
        ),
        // In the cluster each replica pod writes from its own IP.
        None => (
            event.user.username.as_str(),
            event.source_ips.first().cloned().unwrap_or_default(),
        ),
    }
}

fn short(user: &str) -> &str {
    match user {
        JOBKEEPER_USER => "jobkeeper",
        KCM_JOB_CONTROLLER => "kcm-job-controller",
        other => other,
    }
}

pub fn read(log: &Path, ns: &str) -> anyhow::Result<Audit> {
    let file = std::fs::File::open(log).with_context(|| format!("opening {}", log.display()))?;
    let mut audit = Audit::default();
    for line in std::io::BufReader::new(file).lines() {
        let Ok(event) = serde_json::from_str::<AuditEvent>(&line?) else {
            continue;
        };
        if event.stage != "ResponseComplete" && event.stage != "Panic" {
            continue;
        }
        audit.add(&event, ns);
    }
    audit.writes.sort_by_key(|w| w.at);
    Ok(audit)
}

impl Audit {
    fn add(&mut self, event: &AuditEvent, ns: &str) {
        let Some(object) = &event.object_ref else {
            return;
        };
        let resource = match (&object.resource, &object.subresource) {
            (Some(r), Some(s)) => format!("{r}/{s}"),
            (Some(r), None) => r.clone(),
            _ => return,
        };
        let code = event
            .response_status
            .as_ref()
            .and_then(|s| s.code)
            .unwrap_or(0);
        let (user, replica) = who(event);
        let writes = matches!(
            event.verb.as_str(),
            "create" | "update" | "patch" | "delete"
        );
        if resource == "jobs/status" && code == 422 && writes {
            self.status_422 += 1;
        }
        if object.namespace.as_deref() != Some(ns) {
            return;
        }
        if code == 409 {
            self.conflicts += 1;
        }
        if code == 409 || code == 422 {
            let key = format!("{} {} {resource} {code}", short(user), event.verb);
            *self.errors.entry(key).or_default() += 1;
        }
        if user == JOBKEEPER_USER && writes {
            self.writes.push(Write {
                at: event.request_received_timestamp,
                replica,
            });
        }
    }

    /// Writes by jobkeeper answered 409 and 422.
    pub fn jobkeeper_errors(&self, code: u16) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| k.starts_with("jobkeeper ") && k.ends_with(&format!(" {code}")))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Single-writer evidence from the audit log (two replicas): the writes in time order,
/// cut into terms, each a run of writes by one process incarnation.
#[derive(Debug, Default, Clone)]
pub struct Terms {
    /// (incarnation, first write, last write, writes) per term.
    pub terms: Vec<(String, Timestamp, Timestamp, u64)>,
    /// Incarnations that wrote in more than one term though their log shows no lost
    /// lease in between: two writers at once.
    pub interleaved: Vec<String>,
    /// Writes with no replica named (not through a replica kubeconfig).
    pub unattributed: u64,
}

/// Cuts `writes` into terms and flags an incarnation whose writes are split by another's
/// more often than it stepped down as leader (`lease_losses`, from its own log).
pub fn terms(writes: &[Write], lease_losses: &HashMap<String, u64>) -> Terms {
    let mut out = Terms::default();
    for w in writes {
        if w.replica.is_empty() {
            out.unattributed += 1;
            continue;
        }
        match out.terms.last_mut() {
            Some(t) if t.0 == w.replica => {
                t.2 = w.at;
                t.3 += 1;
            }
            _ => out.terms.push((w.replica.clone(), w.at, w.at, 1)),
        }
    }
    let mut per_incarnation: HashMap<&str, u64> = HashMap::new();
    for t in &out.terms {
        *per_incarnation.entry(t.0.as_str()).or_default() += 1;
    }
    for (incarnation, n) in per_incarnation {
        let allowed = 1 + lease_losses.get(incarnation).copied().unwrap_or(0);
        if n > allowed {
            out.interleaved.push(format!(
                "{incarnation}: {n} terms, {} lease losses",
                allowed - 1
            ));
        }
    }
    out.interleaved.sort();
    out
}
