//! The bad-input catalogue: what a Job author, another client or a failing cluster can throw
//! at jobkeeper, each case against the local control plane. Every case checks the event or
//! log line jobkeeper gives, that it neither crashed nor spun, and that a healthy Job next
//! to the bad one is served as usual. README.md ("Bad input") lists the cases and what each
//! gets.

mod support;

#[path = "bad_input/api.rs"]
mod api;
#[path = "bad_input/values.rs"]
mod values;
#[path = "bad_input/writes.rs"]
mod writes;
