//! The pure core: the spec model and its validation, the field table, rendering, planning,
//! per-extension status, diagnostics and the JSON Schema. Plain functions over data; the
//! adapters (git, database, Asterisk, files, HTTP) live outside and call in.
//!
//! Import order inside the core (checked by `tests/architecture.rs`):
//! `diag` < `catalogue` < `spec` (with `spec::fields`) < `render`, `plan` < `status`; `schema` uses `spec`.

pub mod catalogue;
pub mod diag;
pub mod plan;
pub mod render;
pub mod schema;
pub mod spec;
pub mod status;
