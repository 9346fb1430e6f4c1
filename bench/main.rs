//! jobkeeper-bench: the same Job workloads through the built-in job controller (KCM) and
//! through jobkeeper on one local control plane, next to a minimal writer that issues only
//! the calls a Job needs (the ceiling). One cluster per client limit; see bench/README.md.
#![forbid(unsafe_code)]

mod audit;
mod ceiling;
mod cluster;
mod foreign;
mod plots;
mod procfs;
mod report;
mod run;
#[path = "../tools/shared.rs"]
mod shared;
mod slim;
mod watch;
mod workload;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

use crate::workload::Workload;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "jobkeeper-bench",
    about = "Job controller benchmark: KCM vs jobkeeper vs a minimal writer"
)]
pub struct Args {
    /// Multiplies every workload size (Jobs, completions, parallelism); 0.1 for a quick run.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Workloads to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "paced,small,small-foreign,wide,indexed,indexed-huge"
    )]
    pub workloads: Vec<String>,
    /// Who syncs the Jobs: kcm, jobkeeper, ceiling.
    #[arg(long, value_delimiter = ',', default_value = "kcm,jobkeeper,ceiling")]
    pub sides: Vec<String>,
    /// Client limits as QPS:BURST, the same for KCM and jobkeeper; one cluster each.
    #[arg(long, value_delimiter = ',', default_value = "20:30,500:1000")]
    pub limits: Vec<String>,
    /// paced: 1-pod Jobs created at --paced-rate per second (latency below saturation).
    #[arg(long, default_value_t = 100)]
    pub paced_jobs: u32,
    #[arg(long, default_value_t = 5.0)]
    pub paced_rate: f64,
    /// small: many 1-pod Jobs created at once.
    #[arg(long, default_value_t = 1000)]
    pub small_jobs: u32,
    /// wide: Jobs × parallelism × completions, some pods failing once.
    #[arg(long, default_value_t = 100)]
    pub wide_jobs: u32,
    #[arg(long, default_value_t = 10)]
    pub wide_parallelism: u32,
    #[arg(long, default_value_t = 20)]
    pub wide_completions: u32,
    #[arg(long, default_value_t = 10.0)]
    pub wide_fail_percent: f64,
    /// indexed: one Indexed Job.
    #[arg(long, default_value_t = 10_000)]
    pub indexed_completions: u32,
    #[arg(long, default_value_t = 500)]
    pub indexed_parallelism: u32,
    /// small-foreign: the small workload while this many bare pods no Job owns run on the
    /// fake node (namespace bench-foreign; created before the workload, deleted after it).
    #[arg(long, default_value_t = 50_000)]
    pub foreign_pods: u32,
    /// indexed-huge: one Indexed Job, only at client limits of --indexed-huge-min-qps or
    /// more, with its own timeout.
    #[arg(long, default_value_t = 100_000)]
    pub indexed_huge_completions: u32,
    #[arg(long, default_value_t = 1000)]
    pub indexed_huge_parallelism: u32,
    #[arg(long, default_value_t = 500.0)]
    pub indexed_huge_min_qps: f64,
    #[arg(long, default_value_t = 7200)]
    pub indexed_huge_timeout_s: u64,
    /// fat (not in the default list; memory with big templates): Jobs × parallelism ×
    /// completions whose pod template carries --fat-template-kib of annotation.
    #[arg(long, default_value_t = 16)]
    pub fat_jobs: u32,
    #[arg(long, default_value_t = 100)]
    pub fat_parallelism: u32,
    #[arg(long, default_value_t = 100)]
    pub fat_completions: u32,
    #[arg(long, default_value_t = 100)]
    pub fat_template_kib: u32,
    /// Pending → Running delay of every pod (kwok, for every side's pods).
    #[arg(long, default_value_t = 100)]
    pub pod_start_ms: u64,
    /// Running → Succeeded/Failed delay of every pod.
    #[arg(long, default_value_t = 1000)]
    pub pod_run_ms: u64,
    /// kube-controller-manager --controllers.
    #[arg(
        long,
        default_value = "job-controller,garbage-collector-controller,serviceaccount-controller"
    )]
    pub kcm_controllers: String,
    /// Give up on one workload run after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_s: u64,
    /// Output folder (default bench/results/<UTC date>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The jobkeeper binary (default: next to this one).
    #[arg(long)]
    pub jobkeeper_bin: Option<PathBuf>,
    /// Only rebuild report and plots from OUT/raw/results.json.
    #[arg(long)]
    pub report_only: bool,
    /// Keep the runs already in OUT/raw/results.json and do only the missing ones (a long
    /// run can be done one limit or workload at a time, or finished after a crash).
    #[arg(long)]
    pub resume: bool,
    /// Start no cluster: add the runs of --limits saved in OUT/raw/run-*.json by a bench
    /// that stopped before the end, charging their API requests from the audit log its
    /// cluster folder (.bench-cluster-QPS-BURST) still holds; then write the report.
    #[arg(long)]
    pub recover: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,jobkeeper_bench=info".into()),
        )
        .with_target(false)
        .init();
    let out = args.out.clone().unwrap_or_else(|| {
        let date = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d");
        PathBuf::from(format!("bench/results/{date}"))
    });
    let raw = out.join("raw");
    std::fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
    plots::load_font()?;

    let results = if args.report_only {
        run::load(&raw)?
    } else if args.recover {
        run::recover(&args, &raw)?
    } else {
        let workloads = args
            .workloads
            .iter()
            .map(|w| Workload::from_args(w, &args))
            .collect::<anyhow::Result<Vec<_>>>()?;
        tokio::select! {
            r = run::all(&args, &workloads, &raw) => r?,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; clusters torn down"),
        }
    };
    let text = report::markdown(&args, &results);
    std::fs::write(out.join("report.md"), &text)?;
    plots::draw(&results, &out)?;
    println!("{}", report::summary(&results));
    println!("report: {}", out.join("report.md").display());
    Ok(())
}
