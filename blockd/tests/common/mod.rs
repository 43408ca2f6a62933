//! Shared test helpers: a simulated store (sans-IO core over a simulated drive with a volatile
//! cache) and a reference model of what each block may contain.
#![allow(dead_code)]

pub mod model;
pub mod simstore;
