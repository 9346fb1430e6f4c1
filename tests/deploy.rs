//! The install manifests against the real apiserver: `deploy/` applies (server-side dry run,
//! so admission and validation run), its pod passes the `restricted` Pod Security level the
//! namespace enforces, the Deployment's ports, probes and flags match what the binary
//! serves and accepts, and the kind overlay renders `--all-jobs`. Also lints the Dockerfile,
//! and runs the sample Jobs under the RBAC `deploy/` grants.

mod support;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use support::*;

fn kubectl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(cluster_bin("kubectl"))
        .arg("--kubeconfig")
        .arg(cluster_dir().join("admin.kubeconfig"))
        .args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("kubectl stdin")
            .write_all(input)
            .expect("writing to kubectl");
    }
    child.wait_with_output().expect("waiting for kubectl")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The rendered kustomization as a list of objects.
fn render(dir: &str) -> Vec<Value> {
    let yaml = ok(&kubectl(&["kustomize", dir], None), "kubectl kustomize");
    let json = ok(
        &kubectl(
            &["create", "--dry-run=client", "-o", "json", "-f", "-"],
            Some(yaml.as_bytes()),
        ),
        "converting the manifests to JSON",
    );
    // One JSON object per manifest, back to back.
    serde_json::Deserializer::from_str(&json)
        .into_iter::<Value>()
        .map(|v| v.expect("kubectl JSON"))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifests"))
}

fn container(objects: &[Value]) -> Value {
    find(objects, "Deployment", "jobkeeper")["spec"]["template"]["spec"]["containers"][0].clone()
}

fn args(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .expect("container args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn deploy_applies_with_a_server_side_dry_run() {
    let out = ok(
        &kubectl(&["apply", "-k", "deploy/", "--dry-run=server"], None),
        "kubectl apply -k deploy/ --dry-run=server",
    );
    for object in [
        "namespace/jobkeeper-system",
        "serviceaccount/jobkeeper",
        "clusterrole.rbac.authorization.k8s.io/jobkeeper",
        "clusterrolebinding.rbac.authorization.k8s.io/jobkeeper",
        "role.rbac.authorization.k8s.io/jobkeeper-leader-election",
        "rolebinding.rbac.authorization.k8s.io/jobkeeper-leader-election",
        "deployment.apps/jobkeeper",
        "service/jobkeeper-metrics",
        "poddisruptionbudget.policy/jobkeeper",
    ] {
        assert!(out.contains(object), "{object} missing from:\n{out}");
    }
}

/// A manifest file as a list of objects, in kubectl's JSON.
fn objects_in(file: &str) -> Vec<Value> {
    let json = ok(
        &kubectl(
            &["create", "--dry-run=client", "-o", "json", "-f", file],
            None,
        ),
        "reading the manifests",
    );
    serde_json::Deserializer::from_str(&json)
        .into_iter::<Value>()
        .map(|v| v.expect("kubectl JSON"))
        .collect()
}

/// `kubectl apply -f deploy/` (no kustomize) installs the same objects as `-k deploy/`:
/// the one-file install is the kustomization rendered, and nothing else in deploy/ is a
/// file kubectl would read.
#[test]
fn one_file_install_is_the_rendered_kustomization() {
    assert_eq!(
        objects_in("deploy/jobkeeper.yaml"),
        render("deploy/"),
        "deploy/jobkeeper.yaml is stale: run `make manifests`"
    );
    let out = ok(
        &kubectl(&["apply", "-f", "deploy/", "--dry-run=server"], None),
        "kubectl apply -f deploy/ --dry-run=server",
    );
    assert!(out.contains("deployment.apps/jobkeeper"), "{out}");
}

#[test]
fn deployment_pod_passes_the_restricted_pod_security_level() {
    let objects = render("deploy/");
    let namespace = find(&objects, "Namespace", "jobkeeper-system");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    // Admission judges pods, not Deployments: dry-run the Deployment's pod itself in the
    // namespace (which tests/cluster/up.sh created from the same namespace.yaml).
    let template = &find(&objects, "Deployment", "jobkeeper")["spec"]["template"];
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "jobkeeper-",
            "namespace": "jobkeeper-system",
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    });
    let out = kubectl(
        &["create", "--dry-run=server", "-o", "name", "-f", "-"],
        Some(pod.to_string().as_bytes()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("PodSecurity"),
        "the Deployment's pod is rejected or warned about: {stderr}"
    );
}

#[test]
fn deployment_matches_what_the_binary_serves() {
    let objects = render("deploy/");
    let c = container(&objects);
    assert_eq!(args(&c), ["run", "--leader-elect", "--log-format=json"]);
    assert_eq!(c["image"], "jobkeeper:dev");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");

    // The ports are the binary's default listen addresses.
    let help = Command::new(jobkeeper_binary())
        .args(["run", "--help"])
        .output()
        .expect("jobkeeper run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no {name} port"))
    };
    assert!(
        help.contains(&format!("[default: 0.0.0.0:{}]", port("metrics"))),
        "{help}"
    );
    assert!(
        help.contains(&format!("[default: 0.0.0.0:{}]", port("health"))),
        "{help}"
    );
    assert_eq!(port("metrics"), 8080);
    assert_eq!(port("health"), 8081);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "health");
    }

    // The Lease namespace and identity come from the downward API, under the variables
    // the binary reads.
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_string(),
                e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            (
                "JOBKEEPER_LEADER_ELECT_NAMESPACE".to_string(),
                "metadata.namespace".to_string()
            ),
            ("POD_NAME".to_string(), "metadata.name".to_string()),
        ]
    );
    for var in ["JOBKEEPER_LEADER_ELECT_NAMESPACE", "POD_NAME"] {
        assert!(
            help.contains(&format!("[env: {var}")),
            "{var} not in:\n{help}"
        );
    }

    let security = &c["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"},
               "limits": {"cpu": "500m", "memory": "256Mi"}})
    );

    let deployment = find(&objects, "Deployment", "jobkeeper");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "jobkeeper"
    );
    let service = find(&objects, "Service", "jobkeeper-metrics");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn kind_overlay_adds_all_jobs_and_nothing_else() {
    let base = container(&render("deploy/"));
    let all_jobs = container(&render("deploy/kind/all-jobs"));
    assert!(!args(&base).contains(&"--all-jobs"));
    let mut expected = args(&base);
    expected.push("--all-jobs");
    assert_eq!(args(&all_jobs), expected);
    let strip_args = |mut c: Value| {
        c.as_object_mut().unwrap().remove("args");
        c
    };
    assert_eq!(strip_args(all_jobs.clone()), strip_args(base));

    let text = ok(
        &kubectl(&["kustomize", "deploy/kind/all-jobs"], None),
        "kubectl kustomize deploy/kind/all-jobs",
    );
    assert!(text.contains("- --all-jobs"), "{text}");
    ok(
        &kubectl(
            &["apply", "-k", "deploy/kind/all-jobs", "--dry-run=server"],
            None,
        ),
        "kubectl apply -k deploy/kind/all-jobs --dry-run=server",
    );

    // The matching kind cluster leaves out the built-in job controller and nothing that
    // kubeadm needs.
    let cluster = std::fs::read_to_string(repo_root().join("deploy/kind/cluster.yaml"))
        .expect("deploy/kind/cluster.yaml");
    assert!(
        cluster.contains(r#"controllers: "*,bootstrapsigner,tokencleaner,-job-controller""#),
        "{cluster}"
    );
}

#[test]
fn dockerfile_passes_hadolint() {
    let out = Command::new(repo_root().join("tests/lint-dockerfile.sh"))
        .output()
        .expect("running tests/lint-dockerfile.sh");
    assert!(
        out.status.success(),
        "hadolint findings:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sample Jobs, run by jobkeeper under the identity `deploy/`'s RBAC binds and nothing
/// more: they finish as their comments promise, so the ClusterRole is sufficient.
#[tokio::test]
async fn example_jobs_finish_under_the_deploy_rbac() {
    let env = TestEnv::new("examples").await;
    ok(
        &kubectl(&["apply", "-n", &env.ns, "-f", "deploy/examples/"], None),
        "applying deploy/examples",
    );
    let hello = env.wait_condition("hello", "Complete").await;
    assert_eq!(hello.succeeded, Some(3));
    let indexed = env.wait_condition("indexed", "Complete").await;
    assert_eq!(indexed.completed_indexes.as_deref(), Some("0-4"));
    let failing = env.wait_condition("failing", "Failed").await;
    assert_eq!(
        failing.failed,
        Some(3),
        "backoffLimit 2: the third failure fails the Job"
    );
    let reason = failing
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .and_then(|c| c.reason);
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    env.assert_no_rejected_status().await;
    let forbidden = env
        .controller()
        .counter("jobkeeper_kube_api_requests_total", &[("code", "403")])
        .await;
    assert_eq!(
        forbidden, 0.0,
        "a request was forbidden: the ClusterRole is short"
    );
}
