//! Command-line flags; every flag can also come from a `JOBKEEPER_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The built-in controller's own name in `spec.managedBy`; we never claim it.
pub const BUILT_IN_MANAGER: &str = "kubernetes.io/job-controller";
pub const DEFAULT_MANAGER: &str = "jobkeeper.dev/job-controller";

#[derive(Debug, Parser)]
#[command(
    name = "jobkeeper",
    version,
    about = "A Kubernetes Job controller for Jobs whose spec.managedBy names it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Kubeconfig to use; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "JOBKEEPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter: a level (info, debug) or a tracing directive list ("info,jobkeeper=debug").
    #[arg(
        long,
        env = "JOBKEEPER_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Explain one Job: who owns it, its pods, the rule that decides it, what happens next.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spec.managedBy value of the Jobs this controller owns.
    #[arg(long, env = "JOBKEEPER_MANAGED_BY", default_value = DEFAULT_MANAGER, value_parser = parse_managed_by)]
    pub managed_by: String,
    /// Also own Jobs without spec.managedBy (only where the built-in job controller is off).
    #[arg(long, env = "JOBKEEPER_ALL_JOBS")]
    pub all_jobs: bool,
    /// Namespace to watch (repeatable, or comma-separated); all namespaces when unset.
    #[arg(
        long = "namespace",
        env = "JOBKEEPER_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Jobs synced at the same time.
    #[arg(long, env = "JOBKEEPER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Sustained requests per second to the API server (0 = unlimited).
    #[arg(long, env = "JOBKEEPER_KUBE_API_QPS", default_value_t = 50.0, value_parser = parse_qps)]
    pub kube_api_qps: f32,
    /// Requests allowed in a burst above the QPS.
    #[arg(long, env = "JOBKEEPER_KUBE_API_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub kube_api_burst: u32,
    /// Least time between two status writes of one Job that only move its counters (pods
    /// finished or counted): the first after a quiet spell goes at once, the rest of a burst
    /// is batched. startTime, conditions and completionTime are always written at once.
    #[arg(long, env = "JOBKEEPER_STATUS_BATCH_PERIOD", default_value = "500ms", value_parser = parse_delay)]
    pub status_batch_period: Duration,
    /// The longest the batch period grows to while requests meet delays (see the README's
    /// "Status writes under load").
    #[arg(long, env = "JOBKEEPER_STATUS_BATCH_PERIOD_MAX", default_value = "2s", value_parser = parse_delay)]
    pub status_batch_period_max: Duration,
    /// How long a change of only active, ready or terminating may wait for the next write
    /// (the built-in controller batches every pod event for 1 s).
    #[arg(long, env = "JOBKEEPER_STATUS_GAUGE_DELAY", default_value = "1s", value_parser = parse_delay)]
    pub status_gauge_delay: Duration,
    /// Deadline of every API request but watches (a watch is a long poll the server ends
    /// after --watch-timeout; kube-runtime reconnects one that stays silent 5 s longer).
    #[arg(long, env = "JOBKEEPER_KUBE_API_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub kube_api_timeout: Duration,
    /// Server-side timeout of each watch request (timeoutSeconds); a watch that hears
    /// nothing for this plus 5 s is presumed dead and reconnected.
    #[arg(long, env = "JOBKEEPER_WATCH_TIMEOUT", default_value = "290s", value_parser = parse_duration)]
    pub watch_timeout: Duration,
    /// A watch that has failed to (re)connect for this long turns /readyz false until it
    /// recovers.
    #[arg(long, env = "JOBKEEPER_WATCH_UNHEALTHY_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub watch_unhealthy_after: Duration,
    /// Address for /metrics.
    #[arg(long, env = "JOBKEEPER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Address for /healthz and /readyz.
    #[arg(long, env = "JOBKEEPER_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    #[command(flatten)]
    pub leader: LeaderArgs,
}

#[derive(Debug, Args)]
pub struct LeaderArgs {
    /// Elect a leader through a Lease; only the leader syncs Jobs.
    #[arg(long, env = "JOBKEEPER_LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "JOBKEEPER_LEADER_ELECT_LEASE_NAME",
        default_value = "jobkeeper"
    )]
    pub leader_elect_lease_name: String,
    /// Namespace of the Lease (in-cluster: the pod's namespace).
    #[arg(
        long,
        env = "JOBKEEPER_LEADER_ELECT_NAMESPACE",
        default_value = "jobkeeper-system"
    )]
    pub leader_elect_namespace: String,
    /// How long a lease holds without renewal, e.g. 15s.
    #[arg(long, env = "JOBKEEPER_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// How long a leader keeps trying to renew before it stops syncing and stands by; must
    /// be shorter than the lease duration, so the leader stops writing before anyone sees its
    /// lease expire.
    #[arg(long, env = "JOBKEEPER_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often the leader renews and a standby looks at the Lease; must be shorter than
    /// the renew deadline.
    #[arg(long, env = "JOBKEEPER_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// This instance's name in the Lease (default: the host name); the holder identity is
    /// `<name>_<random>`, unique per process.
    #[arg(long, env = "POD_NAME")]
    pub leader_elect_identity: Option<String>,
}

impl LeaderArgs {
    /// Checks what clap cannot: retry period < renew deadline < lease duration (as
    /// client-go's leader election requires), and a lease of whole seconds (the Lease
    /// stores leaseDurationSeconds).
    pub fn validate(&self) -> Result<(), String> {
        let (lease, renew, retry) = (
            self.leader_elect_lease_duration,
            self.leader_elect_renew_deadline,
            self.leader_elect_retry_period,
        );
        if lease < Duration::from_secs(1) || lease.subsec_nanos() != 0 {
            return Err(format!(
                "--leader-elect-lease-duration {lease:?} must be a whole number of seconds, at least 1s"
            ));
        }
        if renew >= lease {
            return Err(format!(
                "--leader-elect-renew-deadline {renew:?} must be shorter than --leader-elect-lease-duration {lease:?}"
            ));
        }
        if retry >= renew {
            return Err(format!(
                "--leader-elect-retry-period {retry:?} must be shorter than --leader-elect-renew-deadline {renew:?}"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The Job, as namespace/name.
    #[arg(value_parser = parse_job_ref)]
    pub job: (String, String),
    /// The spec.managedBy value jobkeeper runs with.
    #[arg(long, env = "JOBKEEPER_MANAGED_BY", default_value = DEFAULT_MANAGER, value_parser = parse_managed_by)]
    pub managed_by: String,
    /// jobkeeper runs with --all-jobs.
    #[arg(long, env = "JOBKEEPER_ALL_JOBS")]
    pub all_jobs: bool,
}

/// managedBy is a domain-prefixed path of at most 63 characters (the apiserver's rule), and
/// never the built-in controller's name.
pub fn parse_managed_by(value: &str) -> Result<String, String> {
    if value == BUILT_IN_MANAGER {
        return Err(format!(
            "{BUILT_IN_MANAGER} is the built-in job controller's name; pick another"
        ));
    }
    if value.len() > 63 {
        return Err(format!(
            "must be at most 63 characters, got {}",
            value.len()
        ));
    }
    let Some((domain, path)) = value.split_once('/') else {
        return Err("must be a domain-prefixed path, like example.com/my-controller".into());
    };
    let domain_ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let path_ok = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~/%!$&'()*+,;=:@".contains(c));
    if !domain_ok || !path_ok {
        return Err("must be a domain-prefixed path, like example.com/my-controller".into());
    }
    Ok(value.to_string())
}

fn parse_qps(value: &str) -> Result<f32, String> {
    let qps: f32 = value.parse().map_err(|e| format!("{e}"))?;
    if !qps.is_finite() || qps < 0.0 {
        return Err("must be a number ≥ 0 (0 = unlimited)".into());
    }
    Ok(qps)
}

/// Durations like `15s`, `500ms`, `2m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{value:?}: add a unit (ms, s, m)"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{value:?}: unit must be ms, s or m")),
    };
    if seconds <= 0.0 {
        return Err(format!("{value:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A duration that may be zero ("0" or "0s" turns the wait off).
pub fn parse_delay(value: &str) -> Result<Duration, String> {
    if value.trim_end_matches(['m', 's']).parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_duration(value)
}

fn parse_job_ref(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{value:?}: expected namespace/name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_by_must_be_a_domain_prefixed_path() {
        assert!(parse_managed_by(DEFAULT_MANAGER).is_ok());
        assert!(parse_managed_by("example.com/a/b").is_ok());
        for bad in [
            "",
            "no-slash",
            "/path",
            "Example.com/x",
            "example.com/",
            BUILT_IN_MANAGER,
        ] {
            assert!(parse_managed_by(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_managed_by(&format!("example.com/{}", "x".repeat(60))).is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_delay("-1s").is_err());
        assert!(parse_delay("soon").is_err());
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cli =
            Cli::try_parse_from(["jobkeeper", "run", "--namespace", "a,b", "--namespace", "c"])
                .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.namespaces, ["a", "b", "c"]);
        assert_eq!(run.managed_by, DEFAULT_MANAGER);
        assert!(!run.leader.leader_elect);
        assert_eq!(run.status_batch_period, Duration::from_millis(500));
        assert_eq!(run.status_batch_period_max, Duration::from_secs(2));
        assert_eq!(run.status_gauge_delay, Duration::from_secs(1));
        assert!(Cli::try_parse_from(["jobkeeper", "run", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["jobkeeper", "run", "--kube-api-qps", "-1"]).is_err());
        assert_eq!(
            run.leader.leader_elect_renew_deadline,
            Duration::from_secs(10)
        );
        assert_eq!(run.leader.leader_elect_retry_period, Duration::from_secs(2));
        assert_eq!(run.leader.validate(), Ok(()));
        assert_eq!(run.kube_api_timeout, Duration::from_secs(30));
        assert_eq!(run.watch_timeout, Duration::from_secs(290));
        assert_eq!(run.watch_unhealthy_after, Duration::from_secs(60));
        let cli = Cli::try_parse_from(["jobkeeper", "explain", "ns/job"]).unwrap();
        assert!(
            matches!(cli.command, Command::Explain(ExplainArgs { job, .. }) if job == ("ns".into(), "job".into()))
        );
    }

    fn leader_args(lease: &str, renew: &str, retry: &str) -> LeaderArgs {
        let cli = Cli::try_parse_from([
            "jobkeeper",
            "run",
            "--leader-elect-lease-duration",
            lease,
            "--leader-elect-renew-deadline",
            renew,
            "--leader-elect-retry-period",
            retry,
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        run.leader
    }

    #[test]
    fn leader_election_timings_must_nest() {
        assert_eq!(leader_args("6s", "4s", "500ms").validate(), Ok(()));
        let err = leader_args("15s", "15s", "2s").validate().unwrap_err();
        assert!(err.contains("--leader-elect-renew-deadline"), "{err}");
        let err = leader_args("15s", "10s", "10s").validate().unwrap_err();
        assert!(err.contains("--leader-elect-retry-period"), "{err}");
        let err = leader_args("1500ms", "1s", "100ms").validate().unwrap_err();
        assert!(err.contains("whole number of seconds"), "{err}");
    }
}
