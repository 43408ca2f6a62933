//! API types (placeholder).
