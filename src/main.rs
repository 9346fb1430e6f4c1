//! The jobkeeper binary: flags, logging, signals and wiring; the work happens in the library.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use jobkeeper::act::client;
use jobkeeper::act::load::ApiLoad;
use jobkeeper::cluster::status_batch::Periods;
use jobkeeper::config::{Cli, Command, RunArgs};
use jobkeeper::edge::elector::Candidate;
use jobkeeper::edge::health::WatchHealth;
use jobkeeper::edge::leader;
use jobkeeper::edge::metrics::Metrics;
use jobkeeper::edge::server::{self, Readiness};
use jobkeeper::edge::telemetry;
use jobkeeper::explain;
use jobkeeper::runtime::{self, Ownership, RuntimeConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log_level)?;
    let config = kube_config(cli.kubeconfig.as_deref()).await?;
    match cli.command {
        Command::Run(args) => run(config, *args).await,
        Command::Explain(args) => {
            let client = kube::Client::try_from(config)?;
            let text = explain::explain(client, &args).await?;
            print!("{text}");
            Ok(())
        }
    }
}

async fn kube_config(path: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?)
        }
        None => Ok(kube::Config::infer().await?),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}

async fn run(config: kube::Config, args: RunArgs) -> anyhow::Result<()> {
    if args.leader.leader_elect {
        args.leader.validate().map_err(anyhow::Error::msg)?;
    }
    let metrics = Arc::new(Metrics::new());
    let watch_health = WatchHealth::new(args.watch_unhealthy_after, metrics.watch_healthy.clone());
    let limit = client::Limit {
        qps: args.kube_api_qps,
        burst: args.kube_api_burst,
        timeout: args.kube_api_timeout,
    };
    let load = Arc::new(ApiLoad::default());
    let client = client::build(
        config.clone(),
        limit,
        watch_health.clone(),
        metrics.clone(),
        load.clone(),
    )?;
    let readiness = Readiness::new(watch_health.clone());
    let (name, pod_name) = candidate_name(&args);
    let identity = process_identity(&name);
    info!(
        managed_by = %args.managed_by,
        all_jobs = args.all_jobs,
        namespaces = ?args.namespaces,
        identity = %identity,
        "jobkeeper starting"
    );

    let metrics_server = tokio::spawn(server::serve_metrics(args.metrics_addr, metrics.clone()));
    let health_server = tokio::spawn(server::serve_health(args.health_addr, readiness.clone()));
    tokio::spawn(watch_health.clone().monitor());

    let runtime_config = RuntimeConfig {
        ownership: Ownership {
            managed_by: args.managed_by.clone(),
            all_jobs: args.all_jobs,
            namespaces: args.namespaces.iter().cloned().collect::<HashSet<_>>(),
        },
        concurrency: args.concurrency,
        reporter_instance: identity.clone(),
        status_batch_periods: Periods {
            least: args.status_batch_period,
            most: args.status_batch_period_max,
        },
        load,
        status_gauge_delay: args.status_gauge_delay,
        watches: runtime::WatchSettings {
            health: watch_health,
            timeout_seconds: u32::try_from(args.watch_timeout.as_secs().max(1)).unwrap_or(u32::MAX),
        },
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let mut rx = stop_rx.clone();
        async move {
            rx.wait_for(|stop| *stop).await.ok();
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        stop_tx.send(true).ok();
    });

    if args.leader.leader_elect {
        let timing = leader::timing(&args.leader);
        let election = leader::Election {
            lease_client: client::build_unlimited(
                config,
                timing.request_timeout(),
                metrics.clone(),
            )?,
            client,
            candidate: Candidate { identity, pod_name },
            config: runtime_config,
            metrics,
            readiness,
        };
        leader::run_elected(election, &args.leader, stop_rx).await?;
    } else {
        metrics.leader.set(1);
        let (caches, controller) = runtime::controller(client, runtime_config, metrics, shutdown);
        let ready = readiness.clone();
        tokio::spawn(async move {
            caches.wait_until_ready().await;
            ready.set_synced(true);
            info!("caches synced");
        });
        tokio::select! {
            _ = controller => {}
            r = metrics_server => r??,
            r = health_server => r??,
        }
    }
    info!("jobkeeper stopped");
    Ok(())
}

/// The candidate's name (`--leader-elect-identity`, `POD_NAME`, else the host name), and
/// that name again when it is the pod's: in-cluster, a Lease held by `<pod>_<other>` is
/// then this pod's previous container.
fn candidate_name(args: &RunArgs) -> (String, Option<String>) {
    let name = args
        .leader
        .leader_elect_identity
        .clone()
        .unwrap_or_else(hostname);
    let pod_name = std::env::var("POD_NAME").ok().filter(|pod| *pod == name);
    (name, pod_name)
}

/// `<name>_<random>`: unique per process, as client-go's leader election makes it. A
/// leader whose container restarts (after a SIGKILL, an OOM kill) comes back as a new
/// candidate that waits for the old lease to expire like everyone else, instead of finding
/// the Lease in its own name and leading on at once.
fn process_identity(name: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{name}_{:08x}", hasher.finish() as u32)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "jobkeeper".into())
}
