//! asterisk-gitops: Asterisk PJSIP extensions managed the GitOps way.
//!
//! Module map (see ARCHITECTURE.md for the whole picture):
//! - [`spec`]: the YAML model, loading and validation (pure; reads files only).
//! - [`diag`]: diagnostics with file, line, column and field, and their output formats.
//! - [`render`]: the managed pjsip config, rendered with minijinja.
//! - [`secret`]: md5Cred hashing and resolving passwordEnv / passwordFile.
//! - [`schema`]: the JSON Schema of the spec files.
//! - [`import`]: adopting an existing pjsip.conf (and CSV bulk files) as spec files.
//! - [`cli`]: the command line (the binary is a thin wrapper around it).
//! - [`fuzzing`]: the fuzz targets' entry points (for `fuzz/` and the corpus replay test).

pub mod app;
pub mod apply;
pub mod asterisk;
pub mod calls;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod db;
pub mod diag;
#[doc(hidden)]
pub mod estate;
pub mod fuzzing;
pub mod git;
pub mod http;
pub mod import;
pub mod managed;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod schema;
pub mod secret;
pub mod spec;
pub mod status;
/// The webhook moved into `http`; the fuzz targets and tests name it here.
pub use http::webhook;
pub mod writeback;
