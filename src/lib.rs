//! asterisk-gitops: Asterisk PJSIP extensions managed the GitOps way.
//!
//! Module map, one layer a line, each using only the ones below it (see ARCHITECTURE.md;
//! `tests/architecture.rs` checks it):
//! - [`cli`], [`app`]: the command line (the binary is a thin wrapper) and the composition root.
//! - [`http`]: the JSON API, the HTML UI, the webhook.
//! - [`calls`]: the call logger.
//! - [`db`], [`asterisk`], [`git`]: the adapters (state store; AMI, ARI, the managed file and
//!   the ARI apply target; the spec mirror and the write-back).
//! - [`reconcile`]: one run, the desired state's source, the scheduler, and the ports the
//!   adapters implement.
//! - [`config`]: every setting; imports no adapter.
//! - [`core`]: spec, field table, render, plan, status, diagnostics, schema: pure.
//! - [`secret`]: md5Cred, where a secret may come from, `SecretString`: a leaf.
//! - [`import`]: adopting an existing pjsip.conf (and CSV bulk files) as spec files.
//! - [`fuzzing`]: the fuzz targets' entry points (for `fuzz/` and the corpus replay test).

pub mod app;
pub mod asterisk;
pub mod calls;
pub mod cli;
pub mod config;
pub mod core;
pub mod db;
#[doc(hidden)]
pub mod estate;
pub mod fuzzing;
pub mod git;
pub mod http;
pub mod import;
pub mod reconcile;
pub mod secret;
