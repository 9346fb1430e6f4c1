//! jobkeeper-chaos: mixed Jobs on a local control plane while jobkeeper is SIGKILLed and
//! restarted, kube-apiserver and etcd are restarted and a second writer edits the same
//! Jobs' labels and annotations; then every final status is compared with the built-in
//! job controller's on a twin Job, and the run is checked for over-counting, duplicate
//! pods, leaked tracking finalizers, rejected status writes and changed user fields.
#![forbid(unsafe_code)]

mod audit;
mod checks;
mod cluster;
mod controllers;
mod deployment;
mod driver;
mod observer;
mod report;
mod rng;
mod scenario;
#[path = "../tools/shared.rs"]
mod shared;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

/// Who runs the Jobs and how jobkeeper is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Jobs with our managedBy next to twins for the built-in controller, one cluster.
    ManagedBy,
    /// `--all-jobs` on a cluster without the built-in job controller; twins from the
    /// managed-by run's reference Jobs.
    AllJobs,
    /// Two jobkeeper processes with leader election; the leader is the one killed.
    TwoReplicas,
    /// The Deployment from deploy/ (`make image`'s image) on a real node: its two pods, the
    /// leader's pod deleted or its process SIGKILLed. Needs root (REAL_NODE=1).
    Deployment,
    /// managed-by, then all-jobs, then two-replicas, then deployment.
    All,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "jobkeeper-chaos",
    about = "jobkeeper under restarts, kills and conflicts"
)]
pub struct Args {
    /// Jobs of ours (each with a twin for the built-in controller where it runs).
    #[arg(long, default_value_t = 500)]
    pub jobs: u32,
    /// SIGKILLs of the controller (the leader, with two replicas), one per --kill-interval-s.
    #[arg(long, default_value_t = 24)]
    pub kills: u32,
    #[arg(long, default_value_t = 10.0)]
    pub kill_interval_s: f64,
    #[arg(long, default_value_t = 2)]
    pub apiserver_restarts: u32,
    #[arg(long, default_value_t = 1)]
    pub etcd_restarts: u32,
    /// Label/annotation updates per second by the second writer.
    #[arg(long, default_value_t = 10.0)]
    pub writer_rate: f64,
    #[arg(long, value_enum, default_value_t = Mode::ManagedBy)]
    pub mode: Mode,
    /// Seed of the scenario (the same seed gives the same Jobs and actions).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long to wait after the chaos for every Job to finish and every finalizer to go.
    #[arg(long, default_value_t = 900)]
    pub settle_timeout_s: u64,
    /// Output folder (default chaos/results/<UTC date>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Folder for the control planes (one sub-folder per mode).
    #[arg(long, default_value = ".chaos-cluster")]
    pub cluster_dir: PathBuf,
    /// The jobkeeper binary (default: next to this one).
    #[arg(long)]
    pub jobkeeper_bin: Option<PathBuf>,
    /// Keep the control planes up afterwards (for inspection).
    #[arg(long)]
    pub keep_cluster: bool,
}

impl Args {
    /// How long the chaos lasts: one kill interval per kill.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.kill_interval_s.max(0.5) * f64::from(self.kills.max(1)))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube's clients log every refused connection while the apiserver restarts.
                .unwrap_or_else(|_| {
                    "warn,kube_client=off,kube_runtime=off,jobkeeper_chaos=info".into()
                }),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let out = args.out.clone().unwrap_or_else(|| {
        let date = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d");
        PathBuf::from(format!("chaos/results/{date}"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let modes = match args.mode {
        Mode::All => vec![
            Mode::ManagedBy,
            Mode::AllJobs,
            Mode::TwoReplicas,
            Mode::Deployment,
        ],
        m => vec![m],
    };
    // Ctrl-C or SIGTERM drops the run, whose cluster is torn down on drop.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut results = Vec::new();
    for mode in modes {
        let result = tokio::select! {
            r = driver::run(&args, mode, &out) => r?,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; clusters torn down"),
            _ = terminate.recv() => anyhow::bail!("terminated; clusters torn down"),
        };
        results.push(result);
    }
    let text = report::markdown(&args, &results);
    std::fs::write(out.join("report.md"), &text)?;
    println!("{}", report::summary(&results));
    println!("report: {}", out.join("report.md").display());
    let violations: u64 = results.iter().map(|r| r.checks.violations()).sum();
    if violations > 0 {
        eprintln!("{violations} violation(s); see the report");
        std::process::exit(1);
    }
    Ok(())
}
