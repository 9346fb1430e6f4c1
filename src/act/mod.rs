//! What the controller does to the cluster: the executor that applies a plan and the
//! rate-limited client it writes through. Knows the order of writes, no Job rules.

pub mod budget;
pub mod client;
pub mod execute;
pub mod load;
