//! Integration tests, compiled into one binary (see `autotests = false` in
//! Cargo.toml). Each module covers one area; shared helpers live in `support`.

mod support;

// Spec files: loading, diagnostics, schema, rendering, the command line.
mod spec;

// import pjsip / import csv / export csv, as a user runs them.
mod import;

// Edits that become commits (plain files, local and remote repositories).
mod writeback;

// The JSON API (write side) and the webhook, through the router.
mod http_api;

// The state store on SQLite, and on PostgreSQL when DATABASE_URL points at one.
mod db;

// Leader election between serve replicas, and fencing, on the state store.
mod leader;

// AMI: the captured transcripts, the stand-in, faults and recovery.
mod asterisk;

// The reconcile loop end to end with the stand-in.
mod reconcile;

// Git as the source of truth: the daemon following a remote, webhooks, API commits.
mod gitops;

// ARI: the captured answers and events, the stand-in's ARI, the client.
mod ari;

// The call logger: calls played through the stand-in's Stasis app.
mod calls;

// The JSON API end to end: write and read routes, status, runs, calls.
mod web;

// The HTML UI in chromium over WebDriver.
mod browser;

// A real Asterisk 22 (built from source) with sipp phones: end to end, faults, contracts.
mod real;

// The daemon's log lines on a pipe: no colour codes; --log-format json.
mod logs;

// The fuzzers' committed corpus, replayed through each entry point, and the findings as regression tests.
mod fuzz_corpus;

// The architecture invariants of ARCHITECTURE.md (no import cycle, layering, a core without I/O).
mod architecture;
