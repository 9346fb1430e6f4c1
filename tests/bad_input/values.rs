//! Cases: see tests/bad_input.rs.
