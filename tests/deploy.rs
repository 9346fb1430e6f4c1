//! The install manifests against the real apiserver: `deploy/` applies (server-side dry run,
//! so admission and validation run), its pod passes the `restricted` Pod Security level the
//! namespace enforces, the Deployment's ports, probes and flags match what the binary
//! serves and accepts, and the kind overlay renders `--all-jobs`. Also lints the Dockerfile,
//! and runs the sample Jobs under the RBAC `deploy/` grants.

mod support;

use std::process::{Command, Output};

use serde_json::{Value, json};
use support::*;

fn kubectl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    kubectl_in(cluster_dir(), args, stdin)
}

fn ok(out: &Output, what: &str) -> String {
    expect_ok(out, what)
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

/// The Dockerfile's logical lines (continuations joined, comments and blank lines dropped).
fn dockerfile_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        // Comment lines inside a continuation are dropped too, as Docker does.
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// Shell-like words: whitespace separates, double quotes group, a backslash escapes.
fn words(text: &str) -> Vec<String> {
    let (mut out, mut word, mut quoted, mut in_word) = (Vec::new(), String::new(), false, false);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                }
                in_word = false;
                continue;
            }
            c => word.push(c),
        }
        in_word = true;
    }
    if in_word {
        out.push(word);
    }
    out
}

/// The image config the Dockerfile's final stage sets, in the OCI config's field names.
/// Instructions that would set config this test does not compare make it fail, so a new
/// one cannot slip past it.
fn dockerfile_final_stage_config() -> Value {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let lines = dockerfile_lines(&text);
    let from = lines
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .expect("a FROM in the Dockerfile");
    let mut config = serde_json::Map::new();
    let (mut labels, mut ports, mut env) = (serde_json::Map::new(), serde_json::Map::new(), vec![]);
    for line in &lines[from + 1..] {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let exec_form = |what: &str| -> Value {
            serde_json::from_str(rest)
                .unwrap_or_else(|e| panic!("{what} must be in exec (JSON) form: {rest}: {e}"))
        };
        match instruction.to_ascii_uppercase().as_str() {
            "LABEL" | "ENV" => {
                for pair in words(rest) {
                    let (key, value) = pair.split_once('=').expect("KEY=VALUE");
                    if instruction.eq_ignore_ascii_case("LABEL") {
                        labels.insert(key.to_string(), json!(value));
                    } else {
                        env.push(json!(format!("{key}={value}")));
                    }
                }
            }
            "USER" => {
                config.insert("User".into(), json!(rest));
            }
            "WORKDIR" => {
                config.insert("WorkingDir".into(), json!(rest));
            }
            "EXPOSE" => {
                for port in rest.split_whitespace() {
                    let port = if port.contains('/') {
                        port.to_string()
                    } else {
                        format!("{port}/tcp")
                    };
                    ports.insert(port, json!({}));
                }
            }
            "ENTRYPOINT" => {
                config.insert("Entrypoint".into(), exec_form("ENTRYPOINT"));
            }
            "CMD" => {
                config.insert("Cmd".into(), exec_form("CMD"));
            }
            // The filesystem, not the config.
            "COPY" | "ADD" | "RUN" | "ARG" => {}
            other => panic!(
                "the Dockerfile's final stage has {other}, which tests/cluster/images/jobkeeper.spec \
                 and this test do not cover yet"
            ),
        }
    }
    for (key, value) in [("Labels", labels), ("ExposedPorts", ports)] {
        if !value.is_empty() {
            config.insert(key.into(), Value::Object(value));
        }
    }
    if !env.is_empty() {
        config.insert("Env".into(), Value::Array(env));
    }
    Value::Object(config)
}

/// The config of the one image in an OCI archive, read as the OCI layout spells it out:
/// index.json -> manifest -> config blob.
fn oci_archive_config(archive: &std::path::Path) -> Value {
    let dir = std::env::temp_dir().join(format!(
        "jobkeeper-image-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&dir)
        .status()
        .expect("running tar");
    assert!(status.success(), "unpacking {}", archive.display());
    let read = |path: &str| -> Value {
        let text =
            std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let blob = |digest: &Value| format!("blobs/{}", digest.as_str().unwrap().replacen(':', "/", 1));
    let index = read("index.json");
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let manifest = read(&blob(&manifests[0]["digest"]));
    let config = read(&blob(&manifest["config"]["digest"]));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    config["config"].clone()
}

/// `make image` packs tests/cluster/images/jobkeeper.spec with tests/cluster/oci-image.sh;
/// the Dockerfile states the same config for `docker build`. Pack the spec the same way
/// (over a placeholder root filesystem, to leave the release build out) and compare the
/// result with the Dockerfile's final stage. JOBKEEPER_IMAGE_ARCHIVE names an archive
/// `make image` built, to check that one as well.
#[test]
fn image_config_matches_the_dockerfile() {
    // The config fields a Dockerfile instruction sets (see dockerfile_final_stage_config).
    const COMPARED: [&str; 7] = [
        "User",
        "Entrypoint",
        "Cmd",
        "ExposedPorts",
        "Labels",
        "Env",
        "WorkingDir",
    ];
    let expected = dockerfile_final_stage_config();
    for field in &COMPARED[..5] {
        assert!(
            expected.get(field).is_some(),
            "the Dockerfile sets no {field}?"
        );
    }
    let work = std::env::temp_dir().join(format!("jobkeeper-spec-{}", std::process::id()));
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("jobkeeper"), "placeholder").unwrap();
    let archive = work.join("image.tar");
    let out = Command::new(repo_root().join("tests/cluster/oci-image.sh"))
        .arg(repo_root().join("tests/cluster/images/jobkeeper.spec"))
        .arg(&rootfs)
        .arg("jobkeeper:dev")
        .arg(&archive)
        .output()
        .expect("running tests/cluster/oci-image.sh");
    ok(&out, "tests/cluster/oci-image.sh");
    let mut archives = vec![archive];
    if let Some(built) = std::env::var_os("JOBKEEPER_IMAGE_ARCHIVE") {
        archives.push(built.into());
    }
    for archive in &archives {
        let mut actual = oci_archive_config(archive);
        actual
            .as_object_mut()
            .unwrap()
            .retain(|k, _| COMPARED.contains(&k.as_str()));
        assert_eq!(
            actual,
            expected,
            "{} differs from the Dockerfile",
            archive.display()
        );
    }
    std::fs::remove_dir_all(&work).ok();
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
    let reason = condition_reason(&failing, "Failed");
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
