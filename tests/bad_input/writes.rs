//! Cases: see tests/bad_input.rs. Writes the cluster refuses or races: pod creates a quota,
//! pod validation or an admission policy rejects; Jobs and namespaces deleted under the
//! controller (while it runs, mid-sync, or while it is down); pods another controller
//! owns; a tracking finalizer removed by hand; UIDs of no pod in `uncountedTerminatedPods`;
//! a foreign finalizer in the pod template.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::support::twins::{self, Twins};
use crate::support::*;

const FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// A bad case's namespace and, beside it, a healthy one; one controller watches both.
struct Case {
    bad: TestEnv,
    healthy: TestEnv,
    flags: Vec<String>,
    /// The Jobs' spec.managedBy (None with `--all-jobs`).
    managed_by: Option<&'static str>,
}

/// A control plane whose kube-controller-manager runs without the built-in job
/// controller, as a cluster running jobkeeper with `--all-jobs` does: nothing else
/// removes a tracking finalizer there (the built-in controller's orphan handling would
/// otherwise release the pods of any deleted Job).
fn cluster_without_job_controller() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        start_cluster(
            "JOBKEEPER_TEST_NO_JOB_CONTROLLER_CLUSTER",
            "target/test-cluster-no-job-controller",
            &[(
                "KCM_CONTROLLERS",
                "*,bootstrapsigner,tokencleaner,-job-controller",
            )],
        )
    })
}

impl Case {
    async fn new(name: &str) -> Case {
        Self::with_flags(name, &[]).await
    }

    async fn with_flags(name: &str, flags: &[&str]) -> Case {
        let bad = TestEnv::without_controller(name).await;
        let healthy = TestEnv::without_controller(&format!("{name}-ok")).await;
        let flags = flags.iter().map(|f| f.to_string()).collect();
        let mut case = Case {
            bad,
            healthy,
            flags,
            managed_by: Some(MANAGED_BY),
        };
        case.restart();
        case
    }

    /// A case on [`cluster_without_job_controller`], jobkeeper with `--all-jobs`.
    async fn all_jobs(name: &str) -> Case {
        let dir = cluster_without_job_controller();
        let bad = TestEnv::without_controller_in(dir, name).await;
        let healthy = TestEnv::without_controller_in(dir, &format!("{name}-ok")).await;
        let mut case = Case {
            bad,
            healthy,
            flags: vec!["--all-jobs".into()],
            managed_by: None,
        };
        case.restart();
        case
    }

    /// (Re)starts the controller.
    fn restart(&mut self) {
        let namespaces = format!("{},{}", self.bad.ns, self.healthy.ns);
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let dir = self.bad.cluster;
        self.bad.controller = Some(Controller::start_in(
            dir,
            &namespaces,
            &dir.join("jobkeeper.kubeconfig"),
            &flags,
        ));
    }

    /// SIGKILLs the controller (no goodbye, no cleanup).
    fn kill(&mut self) {
        if let Some(mut c) = self.bad.controller.take() {
            c.kill();
        }
    }

    fn job(&self, name: &str, completions: i32, parallelism: i32) -> Job {
        let mut job = job_of(name, completions, parallelism);
        job.spec.as_mut().unwrap().managed_by = self.managed_by.map(Into::into);
        job
    }

    fn controller(&self) -> &Controller {
        self.bad.controller()
    }

    /// The controller is up and healthy, and a Job next to the bad one runs to Complete.
    async fn assert_healthy_job_completes(&self) {
        let env = &self.healthy;
        let name = format!("healthy-{}", rand_name());
        env.create_job(&self.job(&name, 2, 1)).await;
        for pod in env.wait_active(&name, 1).await {
            env.succeed(&pod).await;
        }
        let left = env
            .wait_status(&name, "one counted", |s| s.succeeded == Some(1))
            .await;
        assert_eq!(left.failed, None);
        for pod in env.wait_active(&name, 1).await {
            env.succeed(&pod).await;
        }
        let status = env
            .wait_status(&name, "Complete, counted", |s| {
                finished_and_counted(s, "Complete")
            })
            .await;
        assert_eq!((status.succeeded, status.failed), (Some(2), None));
        self.assert_alive().await;
    }

    async fn assert_alive(&self) {
        let health = http_get(self.controller().health_port, "/healthz").await;
        assert!(
            health
                .as_deref()
                .is_some_and(|h| h.starts_with("HTTP/1.0 200") || h.starts_with("HTTP/1.1 200")),
            "the controller is not healthy: {health:?}; log: {}",
            self.controller().log.display()
        );
    }

    /// Pod create calls so far (all namespaces of this controller).
    async fn pod_creates(&self) -> f64 {
        self.controller()
            .counter(
                "jobkeeper_kube_api_requests_total",
                &[("verb", "create"), ("resource", "pods")],
            )
            .await
    }

    async fn syncs(&self) -> f64 {
        self.controller()
            .counter("jobkeeper_job_syncs_total", &[])
            .await
    }

    /// The healthy Job completes while the bad one costs at most a handful of pod creates
    /// and syncs (the healthy Job's own 2 creates and ~10 syncs included): no hot loop.
    async fn assert_healthy_job_completes_without_hot_loop(&self) {
        let (creates, syncs) = (self.pod_creates().await, self.syncs().await);
        self.assert_healthy_job_completes().await;
        let more_creates = self.pod_creates().await - creates;
        let more_syncs = self.syncs().await - syncs;
        assert!(
            more_creates <= 8.0,
            "{more_creates} pod creates: a hot loop?"
        );
        assert!(more_syncs <= 30.0, "{more_syncs} syncs: a hot loop?");
    }
}

fn rand_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    format!("{:05x}", h.finish() & 0xf_ffff)
}

fn holds_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == FINALIZER)
}

/// Waits for an event of `reason` on the Job `job` whose note contains `note`.
async fn wait_event(env: &TestEnv, job: &str, reason: &str, note: &str) -> Event {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    wait_for(
        &format!("a {reason} event on {job} saying {note:?}"),
        Duration::from_secs(30),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(job)
                    && e.note.as_deref().is_some_and(|n| n.contains(note))
            })
        },
    )
    .await
}

/// Waits until the log has a line containing every one of `parts`. As long as the other
/// waits here: under `--kube-api-qps 5` a deleted Job's finalizer removals queue behind the
/// creates of the sync that was running and the sweep's own requests.
async fn wait_log(controller: &Controller, parts: &[&str]) {
    wait_for(
        &format!("a log line with {parts:?}"),
        Duration::from_secs(90),
        || async {
            controller
                .log_text()
                .lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
                .then_some(())
        },
    )
    .await
}

/// Waits until every pod of `job` has lost the tracking finalizer (or is gone).
async fn wait_no_finalizer(env: &TestEnv, job: &str, timeout: Duration) {
    wait_for(
        &format!("no pod of {job} holding the tracking finalizer"),
        timeout,
        || async {
            env.pods_of(job)
                .await
                .iter()
                .all(|p| !holds_finalizer(p))
                .then_some(())
        },
    )
    .await
}

fn job_of(name: &str, completions: i32, parallelism: i32) -> Job {
    let mut job = driven_job(name, Some(MANAGED_BY));
    let spec = job.spec.as_mut().unwrap();
    spec.completions = Some(completions);
    spec.parallelism = Some(parallelism);
    job
}

// ---- a ResourceQuota rejects creates ------------------------------------------------------

/// A quota on the number of pod objects (`count/pods` counts finished pods too, so the
/// quota stays full while the pods the test drives finish).
async fn pod_quota(env: &TestEnv, pods: u32) {
    let quotas: Api<ResourceQuota> = Api::namespaced(env.client.clone(), &env.ns);
    let quota: ResourceQuota = from_json(json!({
        "metadata": {"name": "pods"},
        "spec": {"hard": {"count/pods": pods.to_string()}},
    }));
    match quotas.get_opt("pods").await.expect("reading the quota") {
        None => {
            quotas
                .create(&PostParams::default(), &quota)
                .await
                .expect("creating the quota");
        }
        Some(_) => {
            quotas
                .patch(
                    "pods",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"hard": {"count/pods": pods.to_string()}}})),
                )
                .await
                .expect("raising the quota");
        }
    }
    // The quota admission refuses every pod until the quota controller has filled in the
    // status for the new spec.
    let want = pods.to_string();
    wait_for("the quota's status", Duration::from_secs(30), || async {
        let q = quotas.get("pods").await.ok()?;
        let hard = q.status?.hard?;
        (hard.get("count/pods").map(|q| q.0.as_str()) == Some(want.as_str())).then_some(())
    })
    .await;
}

/// Pods finish while every create is refused by a ResourceQuota: they are counted and lose
/// their finalizer all the same (upstream's manageJob: active minus the pods not created,
/// status still written); once the quota is raised the Job completes with exact counts.
#[tokio::test]
async fn resource_quota_refuses_creates_finished_pods_still_counted() {
    let case = Case::new("quota").await;
    let env = &case.bad;
    pod_quota(env, 2).await;
    env.create_job(&job_of("capped", 4, 3)).await;
    let pods = env.wait_active("capped", 2).await;
    wait_event(env, "capped", "FailedCreate", "exceeded quota").await;
    wait_log(case.controller(), &["job=", "capped", "exceeded quota"]).await;
    let status = env
        .wait_status(
            "capped",
            "active=2 (the pod not created is not active)",
            |s| s.active == Some(2),
        )
        .await;
    assert_eq!(status.succeeded, None);

    for (n, pod) in pods.iter().enumerate() {
        env.succeed(pod).await;
        let want = Some(n as i32 + 1);
        env.wait_status("capped", "the finished pod counted", |s| {
            s.succeeded == want
        })
        .await;
    }
    wait_no_finalizer(env, "capped", Duration::from_secs(30)).await;
    let status = env.status("capped").await;
    assert_eq!((status.active, status.failed), (None, None));
    assert!(!has_condition(&status, "Complete"));

    // Still refused, retried with backoff: a few creates while the healthy Job runs.
    case.assert_healthy_job_completes_without_hot_loop().await;

    pod_quota(env, 10).await;
    let pods = wait_for(
        "the 2 missing pods once the quota allows them (after the error backoff)",
        Duration::from_secs(120),
        || async {
            let pods = env.active_pods("capped").await;
            (pods.len() == 2).then_some(pods)
        },
    )
    .await;
    for pod in &pods {
        env.succeed(pod).await;
    }
    let status = env
        .wait_status("capped", "Complete, counted", |s| {
            finished_and_counted(s, "Complete")
        })
        .await;
    assert_eq!(
        (status.succeeded, status.failed, status.active),
        (Some(4), None, None)
    );
    assert_eq!(
        env.pods_of("capped").await.len(),
        4,
        "one pod per completion"
    );
    wait_no_finalizer(env, "capped", Duration::from_secs(30)).await;
    env.assert_no_rejected_status().await;
    case.assert_alive().await;
}

// ---- Jobs deleted where no Delete event tells of it ---------------------------------------

async fn delete_job(env: &TestEnv, name: &str, policy: PropagationPolicy) {
    env.jobs()
        .delete(
            name,
            &DeleteParams {
                propagation_policy: Some(policy),
                ..DeleteParams::default()
            },
        )
        .await
        .expect("deleting the Job");
}

/// All pods in the namespace (pods_of misses those the garbage collector orphaned).
async fn all_pods(env: &TestEnv) -> Vec<Pod> {
    env.pods()
        .list(&ListParams::default())
        .await
        .expect("listing pods")
        .items
}

/// Jobs deleted while the controller was down leave no Delete event: after a restart their
/// pods lose the tracking finalizer all the same (Orphan: the pods stay; Background,
/// Foreground: the garbage collector deletes them).
#[tokio::test]
async fn jobs_deleted_while_the_controller_is_down_release_their_pods() {
    let mut case = Case::all_jobs("deleted-down").await;
    let env = &case.bad;
    let policies = [
        ("orphan", PropagationPolicy::Orphan),
        ("background", PropagationPolicy::Background),
        ("foreground", PropagationPolicy::Foreground),
    ];
    let mut pods = Vec::new();
    for (name, _) in &policies {
        env.create_job(&case.job(name, 3, 2)).await;
        pods.push(env.wait_active(name, 2).await);
        env.wait_status(name, "active=2", |s| s.active == Some(2))
            .await;
    }
    case.kill();
    let env = &case.bad;
    for ((name, policy), pods) in policies.iter().zip(&pods) {
        // A finished pod nobody counted, and a running one.
        env.succeed(&pods[0]).await;
        delete_job(env, name, policy.clone()).await;
    }
    let orphan_uids: Vec<String> = pods[0].iter().map(|p| p.uid().unwrap()).collect();
    wait_for(
        "the garbage collector to orphan or delete the pods",
        Duration::from_secs(30),
        || async {
            let all = all_pods(env).await;
            let orphaned = all
                .iter()
                .filter(|p| orphan_uids.contains(&p.uid().unwrap()))
                .all(|p| p.owner_references().is_empty());
            let deleting = all
                .iter()
                .filter(|p| !orphan_uids.contains(&p.uid().unwrap()))
                .all(|p| p.metadata.deletion_timestamp.is_some());
            (orphaned && deleting && all.len() == 6).then_some(())
        },
    )
    .await;
    assert!(all_pods(env).await.iter().all(holds_finalizer));

    case.restart();
    let env = &case.bad;
    let left = wait_for(
        "the Background and Foreground pods gone, the Orphan ones without the finalizer",
        Duration::from_secs(60),
        || async {
            let all = all_pods(env).await;
            let uids: Vec<String> = all.iter().map(|p| p.uid().unwrap()).collect();
            (uids == orphan_uids || {
                let mut sorted = uids.clone();
                sorted.sort();
                let mut want = orphan_uids.clone();
                want.sort();
                sorted == want
            })
            .then_some(all)
            .filter(|all| all.iter().all(|p| !holds_finalizer(p)))
        },
    )
    .await;
    assert!(left.iter().all(|p| p.metadata.deletion_timestamp.is_none()));
    assert!(
        env.jobs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    wait_log(
        case.controller(),
        &["removed the tracking finalizer of a pod no Job will count"],
    )
    .await;
    case.assert_healthy_job_completes().await;
}

/// A pod created with the finalizer and the Job's ownerReference while the Job was being
/// deleted (foreground): while the Job lingers its sync releases the pod; once the Job is
/// gone, a pod whose create raced its deletion is released when it shows up.
#[tokio::test]
async fn pod_created_while_its_job_is_being_deleted_is_released() {
    let case = Case::all_jobs("deleted-create").await;
    let env = &case.bad;
    let mut job = case.job("going", 2, 1);
    // Holds the Job in its deletion until the test lets it go.
    job.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let job = env.create_job(&job).await;
    env.wait_active("going", 1).await;
    delete_job(env, "going", PropagationPolicy::Foreground).await;
    env.pods()
        .create(&PostParams::default(), &pod_of(&job, "late-1"))
        .await
        .unwrap();
    wait_for(
        "no pod of the Job being deleted holding the finalizer",
        Duration::from_secs(30),
        || async {
            let all = all_pods(env).await;
            let late = all.iter().any(|p| p.name_any() == "late-1");
            (late && all.iter().all(|p| !holds_finalizer(p))).then_some(())
        },
    )
    .await;

    // Its deletion finishes; a create that raced it lands afterwards.
    env.jobs()
        .patch(
            "going",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("letting the Job go");
    wait_for("the Job gone", Duration::from_secs(30), || async {
        env.jobs()
            .get_opt("going")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    env.pods()
        .create(&PostParams::default(), &pod_of(&job, "late-2"))
        .await
        .unwrap();
    wait_for("the late pod gone", Duration::from_secs(60), || async {
        all_pods(env).await.is_empty().then_some(())
    })
    .await;
    // Released by the orphan handling, or by the Job's Delete event's cleanup when that
    // event came after the pod was cached: either way a line names the pod.
    wait_log(
        case.controller(),
        &["late-2", "removed", "tracking finalizer"],
    )
    .await;
    case.assert_healthy_job_completes().await;
}

/// A pod as a user (or a controller slower than the Job's deletion) would make it for `job`:
/// its labels, its controller ownerReference and the tracking finalizer.
fn pod_of(job: &Job, name: &str) -> Pod {
    let uid = job.uid().unwrap();
    from_json(json!({
        "metadata": {
            "name": name,
            "labels": {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": job.name_any(),
                "app": "test",
            },
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": job.name_any(), "uid": uid,
                "controller": true,
            }],
            "finalizers": [FINALIZER],
        },
        "spec": {
            "schedulerName": DRIVER_SCHEDULER,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53"}],
        },
    }))
}

// ---- pod creates refused by admission ----------------------------------------------------

/// Pods are refused on create, every time: the Job gets a FailedCreate event with the
/// apiserver's words and a status (startTime, active 0), the creates are retried with
/// backoff, and the Job beside it completes.
async fn assert_creates_refused(case: &Case, job: &str, note: &str) {
    let env = &case.bad;
    wait_event(env, job, "FailedCreate", note).await;
    wait_log(case.controller(), &[job, "sync failed", note]).await;
    let status = env
        .wait_status(job, "a status although no pod could be created", |s| {
            s.start_time.is_some()
        })
        .await;
    assert_eq!(
        (status.active, status.succeeded, status.failed),
        (None, None, None)
    );
    case.assert_healthy_job_completes_without_hot_loop().await;
    assert!(env.pods_of(job).await.is_empty());
    case.assert_alive().await;
}

/// A template that passes Job validation whose pods admission refuses: its
/// serviceAccountName names no ServiceAccount (the ServiceAccount admission plugin, no
/// webhook). Pod validation checks the PodSpec rules the Job's template validation already
/// checked; no template was found that passes the one and fails the other, so admission is
/// the route here.
#[tokio::test]
async fn pod_template_refused_at_create_by_serviceaccount_admission() {
    let case = Case::new("refused-sa").await;
    let mut job = case.job("nosa", 2, 1);
    let spec = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.service_account_name = Some("nobody-made-me".into());
    case.bad.create_job(&job).await;
    assert_creates_refused(&case, "nosa", "nobody-made-me").await;
}

/// A ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) refuses the Job's pods.
#[tokio::test]
async fn pods_refused_by_a_validating_admission_policy() {
    let case = Case::new("refused-vap").await;
    let env = &case.bad;
    let name = format!("jobkeeper-test-{}", env.ns);
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"],
            }]},
            "validations": [{
                "expression": "!has(object.metadata.labels) || !('refuse-me' in object.metadata.labels)",
                "message": "pods labelled refuse-me are refused by policy",
            }],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": env.ns,
            }}},
        },
    });
    let manifests = format!("{policy}\n---\n{binding}\n");
    expect_ok(
        &kubectl_in(
            env.cluster,
            &["apply", "-f", "-"],
            Some(manifests.as_bytes()),
        ),
        "applying the admission policy",
    );
    // The apiserver loads a new policy in the background: wait until it refuses.
    let probe: Pod = from_json(json!({
        "metadata": {"name": "probe", "labels": {"refuse-me": "yes"}},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
    }));
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait_for("the policy in force", Duration::from_secs(30), || async {
        match env.pods().create(&dry_run, &probe).await {
            Err(kube::Error::Api(e)) if e.message.contains("refuse-me") => Some(()),
            _ => None,
        }
    })
    .await;
    let mut job = case.job("refused", 2, 1);
    job.spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .insert("refuse-me".into(), "yes".into());
    case.bad.create_job(&job).await;
    let outcome = std::panic::AssertUnwindSafe(assert_creates_refused(
        &case,
        "refused",
        "pods labelled refuse-me are refused by policy",
    ));
    let result = futures::FutureExt::catch_unwind(outcome).await;
    kubectl_in(
        env.cluster,
        &[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &name,
        ],
        None,
    );
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

// ---- the ground moves under a running Job -------------------------------------------------

/// The namespace of a running Job is deleted: its pods and the Job go, nothing is left
/// holding the tracking finalizer (the namespace would never go), the controller neither
/// crashes nor spins.
#[tokio::test]
async fn namespace_deleted_while_its_job_runs() {
    let case = Case::new("ns-gone").await;
    let env = &case.bad;
    env.create_job(&case.job("doomed", 4, 2)).await;
    let pods = env.wait_active("doomed", 2).await;
    env.succeed(&pods[0]).await;
    env.wait_status("doomed", "one counted", |s| s.succeeded == Some(1))
        .await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    namespaces
        .delete(&env.ns, &DeleteParams::default())
        .await
        .expect("deleting the namespace");
    wait_for("the namespace gone", Duration::from_secs(90), || async {
        namespaces
            .get_opt(&env.ns)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    case.assert_healthy_job_completes_without_hot_loop().await;
}

/// Pods another controller owns that match the Job's selector (its controller-uid label)
/// are never adopted, counted or deleted.
#[tokio::test]
async fn pods_of_another_controller_matching_the_selector_are_left_alone() {
    let case = Case::new("foreign-pods").await;
    let env = &case.bad;
    let job = env.create_job(&case.job("mine", 2, 1)).await;
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(env.client.clone(), &env.ns);
    let owner = configmaps
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "other-controller"}})),
        )
        .await
        .unwrap();
    let mut foreign = pod_of(&job, "foreign");
    foreign.metadata.finalizers = None;
    foreign.metadata.owner_references = Some(vec![from_json(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "name": "other-controller",
        "uid": owner.uid().unwrap(), "controller": true,
    }))]);
    let foreign = env
        .pods()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    env.succeed(&foreign).await;
    for n in 1..=2 {
        let pod = wait_for("an active pod of mine", Duration::from_secs(30), || async {
            env.active_pods("mine")
                .await
                .into_iter()
                .find(|p| p.name_any() != "foreign")
        })
        .await;
        env.succeed(&pod).await;
        env.wait_status("mine", "the pod counted", |s| s.succeeded == Some(n))
            .await;
    }
    let status = env
        .wait_status("mine", "Complete, counted", |s| {
            finished_and_counted(s, "Complete")
        })
        .await;
    assert_eq!((status.succeeded, status.failed), (Some(2), None));
    let foreign = env.pods().get("foreign").await.unwrap();
    let owners: Vec<&str> = foreign
        .owner_references()
        .iter()
        .map(|o| o.kind.as_str())
        .collect();
    assert_eq!(owners, ["ConfigMap"], "never adopted");
    assert!(!holds_finalizer(&foreign));
    assert!(foreign.metadata.deletion_timestamp.is_none());
    case.assert_healthy_job_completes_without_hot_loop().await;
}

/// A Job deleted while a slow client is still creating its pods: the sync ends, every pod
/// goes (the garbage collector, with no finalizer holding it), no crash, no spin. The
/// controller logs the deletion: "removed tracking finalizers from its pods", or, when the
/// built-in controller's orphan handling and the garbage collector were first (3 runs in
/// 8 here), that none of its cached pods holds the finalizer.
#[tokio::test]
async fn job_deleted_mid_sync_under_a_slow_client() {
    let case = Case::with_flags(
        "deleted-mid-sync",
        &["--kube-api-qps", "5", "--kube-api-burst", "1"],
    )
    .await;
    let env = &case.bad;
    env.create_job(&case.job("hasty", 30, 30)).await;
    wait_for("the first pods", Duration::from_secs(30), || async {
        (env.pods_of("hasty").await.len() >= 3).then_some(())
    })
    .await;
    delete_job(env, "hasty", PropagationPolicy::Background).await;
    let every_pod_gone = || {
        wait_for("every pod gone", Duration::from_secs(90), || async {
            all_pods(env).await.is_empty().then_some(())
        })
    };
    every_pod_gone().await;
    wait_log(case.controller(), &["hasty", "Job deleted"]).await;
    let syncs = case.syncs().await;
    case.assert_healthy_job_completes().await;
    let more_syncs = case.syncs().await - syncs;
    assert!(more_syncs <= 30.0, "{more_syncs} syncs: a hot loop?");
    // The sync that was creating may have gone on after the Job was gone: those pods go
    // too (the garbage collector deletes them; no finalizer holds them).
    every_pod_gone().await;
    // Nothing created twice.
    let creates = case.pod_creates().await;
    assert!(
        creates <= 32.0,
        "{creates} pod creates for a Job of 30 pods and a Job of 2"
    );
}

/// A running pod loses its tracking finalizer by hand, then succeeds. Neither controller
/// counts it: a pod without the finalizer counts as already counted (upstream's
/// getValidPodsWithFilter skips it), so the Job runs one more pod and ends with exact
/// counts. jobkeeper and the built-in controller (twins) agree field by field.
#[tokio::test]
async fn finalizer_removed_by_hand_from_a_running_pod_then_it_finishes() {
    let case = Case::new("finalizer-stripped").await;
    let env = &case.bad;
    let twins = Twins::create(env, "stripped", |job| {
        let spec = job.spec.as_mut().unwrap();
        spec.completions = Some(2);
        spec.parallelism = Some(1);
    })
    .await;
    let pods = twins.active(1).await;
    for pod in pods.iter().flatten() {
        env.set_ready(pod).await;
        env.pods()
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(json!({
                    "metadata": {"$deleteFromPrimitiveList/finalizers": [FINALIZER]}
                })),
            )
            .await
            .expect("removing the finalizer by hand");
    }
    twins
        .assert_same_when("active=1 ready=1", |s| {
            s.active == Some(1) && s.ready == Some(1)
        })
        .await;
    twins
        .each_pod(&pods, twins::all, twins::Outcome::Succeed)
        .await;
    // Both go on with another pod each, to the end.
    for _ in 0..2 {
        let next = [
            env.wait_active(&twins.names[0], 1).await,
            env.wait_active(&twins.names[1], 1).await,
        ];
        twins
            .each_pod(&next, twins::all, twins::Outcome::Succeed)
            .await;
        if has_condition(&env.status(&twins.names[0]).await, "Complete") {
            break;
        }
    }
    let end = twins.assert_same_end("Complete").await;
    let counts = [
        env.pods_of(&twins.names[0]).await.len(),
        env.pods_of(&twins.names[1]).await.len(),
    ];
    assert_eq!(counts[0], counts[1], "pods run: jobkeeper, built-in");
    assert_eq!(end.succeeded, Some(2));
    case.assert_healthy_job_completes_without_hot_loop().await;
}

/// `status.uncountedTerminatedPods` lists UIDs of no pod, written by another client before
/// jobkeeper saw the Job (the twins suspended, the same status written into each). A listed
/// pod that holds no tracking finalizer (here: none at all) is counted as recorded, as
/// upstream's cleanUncountedPodsWithoutFinalizers counts it: both controllers move the UIDs
/// into `succeeded`/`failed`, then run only the completions left. Same statuses throughout.
#[tokio::test]
async fn uncounted_terminated_pods_listing_uids_of_no_pod() {
    let mut case = Case::new("bogus-uncounted").await;
    case.kill();
    let env = &case.bad;
    let twins = Twins::create(env, "bogus", |job| {
        let spec = job.spec.as_mut().unwrap();
        spec.suspend = Some(true);
        spec.completions = Some(3);
        spec.parallelism = Some(1);
    })
    .await;
    let uid = |n: u32| format!("00000000-0000-4000-8000-{n:012}");
    for name in &twins.names {
        env.jobs()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"uncountedTerminatedPods": {
                    "succeeded": [uid(1), uid(2)],
                    "failed": [uid(3)],
                }}})),
            )
            .await
            .expect("writing UIDs of no pod into uncountedTerminatedPods");
    }
    let names = twins.names;
    case.restart();
    let env = &case.bad;
    let twins = Twins { env, names };
    twins
        .assert_same_when("the listed UIDs counted, nothing left uncounted", |s| {
            s.succeeded == Some(2)
                && s.failed == Some(1)
                && s.uncounted_terminated_pods.as_ref().is_none_or(|u| {
                    u.succeeded.as_ref().is_none_or(Vec::is_empty)
                        && u.failed.as_ref().is_none_or(Vec::is_empty)
                })
        })
        .await;
    twins.patch_spec(json!({"suspend": false})).await;
    let pods = twins.active(1).await;
    twins
        .each_pod(&pods, twins::all, twins::Outcome::Succeed)
        .await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!((end.succeeded, end.failed), (Some(3), Some(1)));
    for name in &twins.names {
        assert_eq!(env.pods_of(name).await.len(), 1, "{name}: one pod run");
    }
    wait_log(case.controller(), &["bogus-ours", "Job completed"]).await;
    case.assert_healthy_job_completes_without_hot_loop().await;
}

const FOREIGN_FINALIZER: &str = "example.com/keep";

/// The pod's finalizers, sorted.
fn finalizers_of(pod: &Pod) -> Vec<String> {
    let mut finalizers = pod.finalizers().to_vec();
    finalizers.sort();
    finalizers
}

async fn lift_foreign_finalizer(env: &TestEnv, pod: &str) {
    env.pods()
        .patch(
            pod,
            &PatchParams::default(),
            &Patch::Strategic(json!({
                "metadata": {"$deleteFromPrimitiveList/finalizers": [FOREIGN_FINALIZER]}
            })),
        )
        .await
        .expect("lifting the foreign finalizer");
}

/// A pod template with a foreign finalizer: the pods carry it and the tracking finalizer,
/// and jobkeeper removes only its own. A pod deleted before it ran stays, held by the
/// foreign finalizer (the pod garbage collector marks it Failed): both controllers count
/// it failed once and replace it. Once the test lifts the foreign finalizer it goes, and
/// nothing is counted again. The twins agree at each step.
#[tokio::test]
async fn pod_template_with_a_foreign_finalizer() {
    let case = Case::new("foreign-finalizer").await;
    let env = &case.bad;
    let twins = Twins::create(env, "kept", |job| {
        let spec = job.spec.as_mut().unwrap();
        spec.completions = Some(2);
        spec.parallelism = Some(2);
        spec.template.metadata.as_mut().unwrap().finalizers = Some(vec![FOREIGN_FINALIZER.into()]);
    })
    .await;
    let pods = twins.active(2).await;
    for pod in pods.iter().flatten() {
        assert_eq!(
            finalizers_of(pod),
            [FINALIZER, FOREIGN_FINALIZER],
            "{}",
            pod.name_any()
        );
    }
    let deleted = [vec![pods[0][0].clone()], vec![pods[1][0].clone()]];
    twins.delete_pods(&deleted, 0).await;
    // Both count the deleted pod failed and replace it; it stays terminating until the
    // pod garbage collector, on its 20 s tick, marks it Failed. A write before the tick
    // says terminating 1, one after it 0, and the two controllers' writes need not fall
    // on the same side: compare once it is no longer terminating.
    twins
        .assert_same_when("the deleted pod counted failed and replaced", |s| {
            s.failed == Some(1) && s.active == Some(2) && s.terminating.unwrap_or(0) == 0
        })
        .await;
    for pod in deleted.iter().flatten() {
        let name = pod.name_any();
        let pod = wait_for(
            "the deleted pod to lose the tracking finalizer only",
            Duration::from_secs(30),
            || async {
                let pod = env.pods().get(&name).await.expect("the deleted pod");
                (finalizers_of(&pod) == [FOREIGN_FINALIZER]).then_some(pod)
            },
        )
        .await;
        assert!(pod.metadata.deletion_timestamp.is_some(), "{name}");
    }

    let active = twins.active(2).await;
    twins
        .each_pod(&active, twins::all, twins::Outcome::Succeed)
        .await;
    let end = twins.assert_same_end("Complete").await;
    assert_eq!((end.succeeded, end.failed), (Some(2), Some(1)));
    for name in &twins.names {
        let pods = env.pods_of(name).await;
        assert_eq!(pods.len(), 3, "{name}: two succeeded, one deleted and held");
        for pod in &pods {
            assert_eq!(
                finalizers_of(pod),
                [FOREIGN_FINALIZER],
                "{}: the foreign finalizer stays",
                pod.name_any()
            );
        }
    }
    wait_log(case.controller(), &["kept-ours", "Job completed"]).await;

    // Let them go: the deleted pods vanish, the Jobs' counts stay.
    for name in &twins.names {
        for pod in env.pods_of(name).await {
            lift_foreign_finalizer(env, &pod.name_any()).await;
        }
    }
    for name in &twins.names {
        wait_for("the deleted pod gone", Duration::from_secs(30), || async {
            (env.pods_of(name).await.len() == 2).then_some(())
        })
        .await;
    }
    let [ours, _] = twins
        .assert_same_when("Complete, after the deleted pods went", |s| {
            finished_and_counted(s, "Complete")
        })
        .await;
    assert_eq!((ours.succeeded, ours.failed), (Some(2), Some(1)));
    case.assert_healthy_job_completes_without_hot_loop().await;
}
