//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub mod asterisk;
pub mod db;
pub mod real;
pub mod web;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under tests/fixtures.
pub fn fixture(path: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(path)
}

/// True when the run must not skip tests whose service is missing (CI sets CI=true).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A running `serve`: its address, the sender that stops it, its task.
pub type Served = (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>);

/// Starts `serve` (`app::run`) on a free loopback port.
pub async fn serve(settings: asterisk_gitops::config::Settings) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(asterisk_gitops::app::run(settings, listener, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// A Bulk Handler extensions export of `n` rows numbered from 20000.
pub fn bulk_handler_csv(n: usize) -> String {
    asterisk_gitops::estate::bulk_handler_csv(20_000, n)
}
