//! What the benchmark (`bench/`), the chaos run (`chaos/`) and the integration tests'
//! support share: a client from one of a local control plane's kubeconfigs, a free loopback
//! port, the audit log's events, pod names masked for comparing twin Jobs, the repository's
//! root and where `make image` leaves its archive. Each includes this file as its module
//! `shared`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// A client from a kubeconfig file, with a read timeout so a restarted or overloaded
/// apiserver cannot hang a request forever.
pub async fn client(path: &Path, read_timeout: Duration) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.read_timeout = Some(read_timeout);
    Ok(kube::Client::try_from(config)?)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The repository's root, where tests/cluster/*.sh and target/ are.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `make image`'s archive of the jobkeeper image: `JOBKEEPER_IMAGE_ARCHIVE`, else
/// `image/jobkeeper.tar` in cargo's target folder.
pub fn image_archive() -> PathBuf {
    std::env::var_os("JOBKEEPER_IMAGE_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("target"))
                .join("image/jobkeeper.tar")
        })
}

/// One line of the apiserver's audit log (`AUDIT=1` in tests/cluster/up.sh), the fields
/// the two programs read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub stage: String,
    pub verb: String,
    pub user: AuditUser,
    pub impersonated_user: Option<AuditUser>,
    pub object_ref: Option<AuditObjectRef>,
    pub request_received_timestamp: Timestamp,
    pub response_status: Option<AuditResponseStatus>,
    #[serde(rename = "sourceIPs", default)]
    pub source_ips: Vec<String>,
}

#[derive(Deserialize)]
pub struct AuditUser {
    pub username: String,
    #[serde(default)]
    pub extra: HashMap<String, Vec<String>>,
}

#[derive(Deserialize)]
pub struct AuditObjectRef {
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Deserialize)]
pub struct AuditResponseStatus {
    pub code: Option<u16>,
}

/// Replaces `<job>-<suffix>` pod names (generateName: `<job>-` or `<job>-<index>-`) in
/// `message` with every name of the Job's pods (`<job>-<suffix>`) replaced by `<pod>`,
/// so messages that name pods compare across twin Jobs.
pub fn mask_pod_names(message: &str, job: &str) -> String {
    let prefix = format!("{job}-");
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find(&prefix) {
        out.push_str(&rest[..at]);
        out.push_str("<pod>");
        let tail = &rest[at + prefix.len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}
