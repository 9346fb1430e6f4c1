//! What the controller knows of the cluster: watch decoding, the pod index, expectations of
//! its own writes, status batching, the selector watches. Reads and remembers; never writes.

pub mod expectations;
pub mod foreign_jobs;
pub mod lenient;
pub mod lenient_time;
pub mod pod_decode;
pub mod pod_index;
pub mod selector_watches;
pub mod status_batch;
pub mod watch_expiry;
