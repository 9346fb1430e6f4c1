//! The edges a person or a cluster sees: the HTTP server, metrics, logs, leader election.
//! Reports on and starts the controller; plans nothing and writes no Job or pod.

pub mod elector;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod telemetry;
