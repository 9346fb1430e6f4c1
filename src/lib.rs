//! jobkeeper: a Kubernetes Job controller for Jobs whose `spec.managedBy` names it.
#![forbid(unsafe_code)]

pub mod plan;
