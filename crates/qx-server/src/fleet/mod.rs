//! The fleet view (docs/spec.md §9): hosts enroll, check in and report events; operators list
//! and inspect them. [`store`] is the storage trait its engines implement.

pub mod store;
