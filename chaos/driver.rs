//! One run of a mode: the control plane, the controller processes, every Job's life as its
//! plan says, the second writer, the chaos timeline (kills, apiserver and etcd restarts),
//! then the wait for everything to settle and the checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::audit::{self, Terms};
use crate::checks::{self, Checks, UserFields};
use crate::cluster::Cluster;
use crate::controllers::Controllers;
use crate::observer::{Observer, TRACKING_FINALIZER};
use crate::rng::Rng;
use crate::scenario::{self, Action, MANAGED_BY, NAMESPACE, Plan};
use crate::{Args, Mode};

/// Everything a mode's run measured and found.
#[derive(Debug, Default)]
pub struct ModeResult {
    pub mode: String,
    pub jobs: usize,
    pub pods: usize,
    pub kills: u32,
    pub apiserver_restarts: u32,
    pub etcd_restarts: u32,
    pub writer_updates: u64,
    pub writer_conflicts: u64,
    pub audit_conflicts: u64,
    pub jobkeeper_conflicts: u64,
    pub audit_errors: BTreeMap<String, u64>,
    pub terms: Option<Terms>,
    pub chaos_s: f64,
    pub settle_s: f64,
    pub checks: Checks,
}

/// What the Job tasks and the second writer share.
struct Ctx {
    mode: Mode,
    jobs: Api<Job>,
    observer: Observer,
    start: Instant,
    book: Mutex<HashMap<String, UserFields>>,
    /// The plans whose twins were not driven alike (see [`checks::twins`]).
    uneven: Mutex<BTreeSet<String>>,
}

impl Ctx {
    /// The Jobs of a plan in this cluster: ours, and the twin where the built-in runs.
    fn names(&self, plan: &Plan) -> Vec<String> {
        match self.mode {
            Mode::AllJobs => vec![plan.ours()],
            _ => vec![plan.ours(), plan.reference()],
        }
    }

    fn managed_by(&self, name: &str) -> Option<&'static str> {
        (self.mode != Mode::AllJobs && name.ends_with("-ours")).then_some(MANAGED_BY)
    }

    /// A step the plan gives was skipped or not confirmed for one of its Jobs.
    fn drove_unevenly(&self, plan: &Plan, job: &str, why: &str) {
        warn!(
            job,
            "{why}: its Suspended condition is left out of the comparison"
        );
        self.uneven
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(plan.name.clone());
    }

    /// Keeps what a user write left on the Job (the newest write wins).
    fn wrote(&self, job: &Job) {
        let fields = UserFields::of(job);
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = book.entry(job.name_any()).or_insert_with(|| fields.clone());
        if fields.resource_version >= entry.resource_version {
            *entry = fields;
        }
    }
}

pub fn slug(mode: Mode) -> &'static str {
    match mode {
        Mode::ManagedBy => "managed-by",
        Mode::AllJobs => "all-jobs",
        Mode::TwoReplicas => "two-replicas",
        Mode::Deployment => "deployment",
        Mode::All => "all",
    }
}

pub async fn run(args: &Args, mode: Mode, out: &Path) -> anyhow::Result<ModeResult> {
    let logs = out.join(slug(mode));
    std::fs::create_dir_all(&logs)?;
    let plans = scenario::plans(args.jobs, args.seed, args.duration());
    let refs = match mode {
        Mode::AllJobs => Some(load_references(out, args)?),
        _ => None,
    };
    let cluster = Cluster::up(&args.cluster_dir.join(slug(mode)), mode, args.keep_cluster).await?;
    namespace(&cluster.admin).await?;
    let observer = Observer::start(cluster.admin.clone(), NAMESPACE);
    let bin = jobkeeper_bin(args)?;
    let mut controllers = Controllers::start(mode, &cluster, &bin, &logs).await?;
    let ctx = Arc::new(Ctx {
        mode,
        jobs: Api::namespaced(cluster.admin.clone(), NAMESPACE),
        observer: observer.clone(),
        start: Instant::now(),
        book: Mutex::default(),
        uneven: Mutex::default(),
    });
    let mut result = ModeResult {
        mode: slug(mode).into(),
        jobs: plans.len(),
        ..Default::default()
    };
    let tasks: Vec<_> = plans
        .iter()
        .map(|p| tokio::spawn(lifecycle(ctx.clone(), p.clone())))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(second_writer(
        ctx.clone(),
        plans.clone(),
        args.writer_rate,
        stop.clone(),
    ));
    chaos(args, &cluster, &mut controllers, &mut result).await?;
    for t in tasks {
        t.await.context("a Job task panicked")??;
    }
    stop.store(true, Ordering::Relaxed);
    (result.writer_updates, result.writer_conflicts) = writer.await?;
    result.chaos_s = ctx.start.elapsed().as_secs_f64();
    let settle_start = Instant::now();
    let settled = settle(&ctx, &plans, Duration::from_secs(args.settle_timeout_s)).await;
    result.settle_s = settle_start.elapsed().as_secs_f64();
    if !settled {
        warn!("not everything settled within {} s", args.settle_timeout_s);
    }
    let (jobs, pods) = lists(&ctx).await?;
    observer.stop();
    let lease_losses = controllers.stop().await;
    let audit = audit::read(&cluster.dir.join("audit.log"), NAMESPACE)?;
    let mut uneven = ctx
        .uneven
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let refs = match refs {
        Some((refs, theirs_uneven)) => {
            uneven.extend(theirs_uneven);
            refs
        }
        None => checks::references(&plans, &jobs),
    };
    if mode == Mode::ManagedBy {
        save_references(out, args, (&refs, &uneven))?;
    }
    result.pods = observer.with(|o| o.pods.len());
    result.audit_conflicts = audit.conflicts;
    result.jobkeeper_conflicts = audit.jobkeeper_errors(409);
    result.audit_errors = audit.errors.clone();
    let mut c = Checks {
        status_422: audit.status_422,
        ..Default::default()
    };
    checks::twins(&plans, &jobs, (&refs, &uneven), &mut c);
    observer.with(|o| {
        checks::over_counting(&plans, o, &mut c);
        checks::duplicates(&plans, o, &mut c);
    });
    checks::finalizers(&pods, &mut c);
    checks::deletions(&plans, &jobs, &pods, &mut c);
    let book = ctx
        .book
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    checks::user_fields(&plans, &jobs, &book, &mut c);
    if matches!(mode, Mode::TwoReplicas | Mode::Deployment) {
        let terms = audit::terms(&audit.writes, &lease_losses);
        c.two_writers = terms.interleaved.clone();
        if terms.unattributed > 0 {
            c.two_writers
                .push(format!("{} writes by no replica", terms.unattributed));
        }
        result.terms = Some(terms);
    }
    result.checks = c;
    Ok(result)
}

fn jobkeeper_bin(args: &Args) -> anyhow::Result<std::path::PathBuf> {
    match &args.jobkeeper_bin {
        Some(b) => Ok(b.clone()),
        None => Ok(std::env::current_exe()?.with_file_name("jobkeeper")),
    }
}

/// The run's namespace, once its default ServiceAccount exists (pods need it).
async fn namespace(client: &kube::Client) -> anyhow::Result<()> {
    let ns: Api<Namespace> = Api::all(client.clone());
    let object: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    ns.create(&PostParams::default(), &object).await?;
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    for _ in 0..300 {
        if sa.get_opt("default").await.ok().flatten().is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no default ServiceAccount in {NAMESPACE}")
}

/// Retries `f` through apiserver and etcd restarts (for up to [`ACTION_WAIT`]); `ok`
/// turns an error that means "already done" into success.
async fn retry<T, F, Fut>(
    what: &str,
    ok: impl Fn(&kube::Error) -> Option<T>,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + ACTION_WAIT;
    loop {
        let e = match f().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if let Some(v) = ok(&e) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: {e}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Creates the plan's Jobs, then does its action to all of them alike.
async fn lifecycle(ctx: Arc<Ctx>, plan: Plan) -> anyhow::Result<()> {
    tokio::time::sleep_until((ctx.start + plan.create_at).into()).await;
    let names = ctx.names(&plan);
    for name in &names {
        create(&ctx, &plan, name).await?;
    }
    match plan.action {
        Action::None => {}
        Action::Resume(after) => {
            tokio::time::sleep(after).await;
            for name in unsuspended(&ctx, &names).await {
                ctx.drove_unevenly(&plan, &name, "never marked Suspended; resumed anyway");
            }
            patch_spec(&ctx, &names, json!({"suspend": false})).await?;
        }
        Action::Scale(after, parallelism) => {
            tokio::time::sleep(after).await;
            for name in &names {
                ctx.observer.allow_parallelism(name, parallelism);
            }
            patch_spec(&ctx, &names, json!({"parallelism": parallelism})).await?;
        }
        Action::SuspendRunning(pause) => {
            // Each twin is suspended when its own first pods run, not when both twins' do:
            // one controller can be a kill behind the other, and a twin whose pods finished
            // meanwhile would complete unsuspended while the other is suspended.
            let one = |name: String| {
                let (ctx, plan) = (&ctx, &plan);
                async move {
                    let names = [name];
                    if !running(ctx, &names, plan.parallelism).await {
                        ctx.drove_unevenly(plan, &names[0], "pods never all ran; not suspended");
                        return Ok(());
                    }
                    patch_spec(ctx, &names, json!({"suspend": true})).await?;
                    tokio::time::sleep(pause).await;
                    if !unsuspended(ctx, &names).await.is_empty() {
                        let why = "never marked Suspended; resumed anyway";
                        ctx.drove_unevenly(plan, &names[0], why);
                    }
                    patch_spec(ctx, &names, json!({"suspend": false})).await
                }
            };
            futures::future::try_join_all(names.iter().cloned().map(one)).await?;
        }
        Action::Delete(policy) => {
            running(&ctx, &names, plan.parallelism).await;
            for name in &names {
                let dp = DeleteParams {
                    propagation_policy: Some(policy.to_kube()),
                    ..Default::default()
                };
                retry(
                    &format!("deleting {name}"),
                    |e| (code(e) == Some(404)).then_some(()),
                    || async { ctx.jobs.delete(name, &dp).await.map(|_| ()) },
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn create(ctx: &Ctx, plan: &Plan, name: &str) -> anyhow::Result<()> {
    let job = scenario::job(plan, name, ctx.managed_by(name));
    // The crowding check must not hang on the observer's Job watch: when it is reconnecting
    // (after an apiserver restart) while the Job is created and scaled down, its relist
    // shows only the lower parallelism, and the pods started at the first one looked like
    // crowding (run 2026-12-05-b, two-replicas: 3 pods at parallelism 3, then scaled to 1).
    ctx.observer.allow_parallelism(name, plan.parallelism);
    let created = retry(
        &format!("creating {name}"),
        |e| (code(e) == Some(409)).then_some(None),
        || async {
            ctx.jobs
                .create(&PostParams::default(), &job)
                .await
                .map(Some)
        },
    )
    .await?;
    let created = match created {
        Some(j) => j,
        // Created by a request whose answer was lost in a restart.
        None => retry(&format!("reading {name}"), |_| None, || ctx.jobs.get(name)).await?,
    };
    ctx.wrote(&created);
    Ok(())
}

async fn patch_spec(ctx: &Ctx, names: &[String], spec: Value) -> anyhow::Result<()> {
    let patch = Patch::Merge(json!({ "spec": spec }));
    for name in names {
        let params = PatchParams::default();
        let job = retry(
            &format!("patching {name}"),
            |_| None,
            || ctx.jobs.patch(name, &params, &patch),
        )
        .await?;
        ctx.wrote(&job);
    }
    Ok(())
}

/// How long a Job's action waits for the state it needs: longer than a loaded apiserver's
/// restart (minutes with 1000 Jobs on 2 cores).
const ACTION_WAIT: Duration = Duration::from_secs(600);

/// Waits (up to [`ACTION_WAIT`]) until each Job has `n` running pods.
async fn running(ctx: &Ctx, names: &[String], n: i32) -> bool {
    let n = usize::try_from(n).unwrap_or(0);
    let deadline = Instant::now() + ACTION_WAIT;
    while Instant::now() < deadline {
        if names.iter().all(|name| ctx.observer.running(name) >= n) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Waits (up to [`ACTION_WAIT`]) until each Job's status says Suspended; returns those
/// that still do not. Resuming earlier makes the outcome a race: a controller that never
/// saw the suspension (killed, or its status write met a 409 and the retry saw the Job
/// resumed) rightly writes no Suspended condition, one that saw it writes "Job resumed";
/// twins must not differ by that luck.
async fn unsuspended(ctx: &Ctx, names: &[String]) -> Vec<String> {
    let deadline = Instant::now() + ACTION_WAIT;
    loop {
        let left: Vec<String> = names
            .iter()
            .filter(|name| {
                !ctx.observer.job(name).is_some_and(|job| {
                    job.status
                        .iter()
                        .flat_map(|s| s.conditions.iter().flatten())
                        .any(|c| c.type_ == "Suspended" && c.status == "True")
                })
            })
            .cloned()
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Updates the labels and annotations of random Jobs with PUTs from the observer's
/// (often stale) copy, so they meet 409s when a controller wrote the Job meanwhile, and
/// retries each from a fresh read. Returns (updates done, 409s met).
async fn second_writer(
    ctx: Arc<Ctx>,
    plans: Vec<Plan>,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let (done, conflicts) = (AtomicU64::new(0), AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let targets: Vec<&Plan> = plans.iter().filter(|p| !p.deleted()).collect();
    let mut rng = Rng::new(0x5eed);
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) && !targets.is_empty() {
        tokio::time::sleep(period).await;
        let plan = targets[(rng.next_u64() % targets.len() as u64) as usize];
        let names = ctx.names(plan);
        let name = &names[(rng.next_u64() % names.len() as u64) as usize];
        let Some(stale) = ctx.observer.job(name) else {
            continue;
        };
        n += 1;
        if touch(&ctx, name, stale, n, &conflicts).await {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    (done.into_inner(), conflicts.into_inner())
}

/// One label/annotation update of `name` starting from `job`; true once it went through.
async fn touch(ctx: &Ctx, name: &str, mut job: Job, n: u64, conflicts: &AtomicU64) -> bool {
    for _ in 0..5 {
        job.metadata.managed_fields = None;
        job.labels_mut()
            .insert("chaos.jobkeeper.dev/touch".into(), n.to_string());
        job.annotations_mut().insert(
            "chaos.jobkeeper.dev/note".into(),
            format!("second writer, update {n}"),
        );
        match ctx.jobs.replace(name, &PostParams::default(), &job).await {
            Ok(j) => {
                ctx.wrote(&j);
                return true;
            }
            Err(e) if code(&e) == Some(409) => {
                conflicts.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
        match ctx.jobs.get(name).await {
            Ok(fresh) => job = fresh,
            Err(_) => return false,
        }
    }
    false
}

/// The chaos timeline: a kill every interval (±20 %), the apiserver and etcd restarts
/// spread between them.
async fn chaos(
    args: &Args,
    cluster: &Cluster,
    controllers: &mut Controllers,
    r: &mut ModeResult,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut rng = Rng::new(args.seed ^ 0xc4a05);
    let interval = args.kill_interval_s.max(0.5);
    let mut events: Vec<(f64, &str)> = (1..=args.kills)
        .map(|k| (interval * (f64::from(k) - 0.2 + 0.4 * rng.unit()), "kill"))
        .collect();
    let total = args.duration().as_secs_f64();
    let spread =
        |n: u32, shift: f64| (1..=n).map(move |i| total * f64::from(i) / f64::from(n + 1) + shift);
    events.extend(spread(args.apiserver_restarts, interval / 2.0).map(|t| (t, "kube-apiserver")));
    events.extend(spread(args.etcd_restarts, interval / 3.0).map(|t| (t, "etcd")));
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut last = Instant::now();
    for (at, what) in events {
        // A slow restart delays what follows; keep half an interval between any two, so a
        // restarted controller runs a while before its next kill.
        let at = (start + Duration::from_secs_f64(at))
            .max(last + Duration::from_secs_f64(interval / 2.0));
        tokio::time::sleep_until(at.into()).await;
        info!(
            at = format!("{:.0}s", start.elapsed().as_secs_f64()),
            what, "chaos"
        );
        match what {
            "kill" => {
                if controllers.kill_one().await? {
                    r.kills += 1;
                }
            }
            component => {
                cluster.restart(component).await?;
                if component == "etcd" {
                    r.etcd_restarts += 1;
                } else {
                    r.apiserver_restarts += 1;
                }
            }
        }
        last = Instant::now();
    }
    Ok(())
}

/// Waits until every Job that stays has finished with nothing uncounted, deleted Jobs are
/// gone with their pods (but orphans), and no pod holds the tracking finalizer.
async fn settle(ctx: &Ctx, plans: &[Plan], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok((jobs, pods)) = lists(ctx).await
            && settled(ctx, plans, &jobs, &pods)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    false
}

fn settled(ctx: &Ctx, plans: &[Plan], jobs: &HashMap<String, Job>, pods: &[Pod]) -> bool {
    let finalizers = pods
        .iter()
        .any(|p| p.finalizers().iter().any(|f| f == TRACKING_FINALIZER));
    let jobs_done = plans.iter().all(|p| {
        ctx.names(p).iter().all(|name| match jobs.get(name) {
            Some(job) => !p.deleted() && checks::finished(job),
            None => p.deleted(),
        })
    });
    let mut c = Checks::default();
    checks::deletions(plans, jobs, pods, &mut c);
    jobs_done && !finalizers && c.deletion.is_empty()
}

async fn lists(ctx: &Ctx) -> anyhow::Result<(HashMap<String, Job>, Vec<Pod>)> {
    let jobs = ctx.jobs.list(&ListParams::default()).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.jobs.clone().into_client(), NAMESPACE);
    let pods = pods.list(&ListParams::default()).await?.items;
    Ok((
        jobs.items.into_iter().map(|j| (j.name_any(), j)).collect(),
        pods,
    ))
}

/// The managed-by run's reference statuses, for the all-jobs run (same seed and size), with
/// the plans it drove unevenly: their references' Suspended conditions are not comparable.
fn save_references(
    out: &Path,
    args: &Args,
    (refs, uneven): (&BTreeMap<String, Value>, &BTreeSet<String>),
) -> anyhow::Result<()> {
    let file = json!({"seed": args.seed, "jobs": args.jobs, "kills": args.kills, "statuses": refs, "uneven": uneven});
    std::fs::write(
        out.join(slug(Mode::ManagedBy)).join("reference.json"),
        serde_json::to_vec_pretty(&file)?,
    )?;
    Ok(())
}

fn load_references(out: &Path, args: &Args) -> anyhow::Result<References> {
    let path = out.join(slug(Mode::ManagedBy)).join("reference.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: run --mode managed-by first (same --out, --seed, --jobs)",
            path.display()
        )
    })?;
    let file: Value = serde_json::from_str(&text)?;
    if file["seed"] != json!(args.seed) || file["jobs"] != json!(args.jobs) {
        bail!(
            "{} is from another scenario (seed/jobs differ)",
            path.display()
        );
    }
    let uneven = match file.get("uneven") {
        Some(names) => serde_json::from_value(names.clone())?,
        None => BTreeSet::new(),
    };
    Ok((serde_json::from_value(file["statuses"].clone())?, uneven))
}

/// Reference statuses by plan, and the plans driven unevenly.
type References = (BTreeMap<String, Value>, BTreeSet<String>);
