//! jobkeeper: a Kubernetes Job controller for Jobs whose `spec.managedBy` names it.
//!
//! The layers, from the inside out (ARCHITECTURE.md follows a Job through them): [`plan`]
//! (pure Job semantics), [`cluster`] (what we know), [`act`] (what we do), [`edge`]
//! (server, metrics, logs, leader election); [`runtime`] connects them.
#![forbid(unsafe_code)]

pub mod act;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod explain;
pub mod plan;
pub mod runtime;
