//! jobkeeper: a Kubernetes Job controller for Jobs whose `spec.managedBy` names it.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod execute;
pub mod expectations;
pub mod explain;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod pod_decode;
pub mod pod_index;
pub mod runtime;
pub mod selector_watches;
pub mod server;
pub mod status_batch;
pub mod telemetry;
