//! What the benchmarks share (each includes this with `#[path]`).
#![allow(dead_code)] // each benchmark uses some of these

use asterisk_gitops::db::{Db, Retry};

/// A fresh database for a benchmark: PostgreSQL database `name` (dropped and
/// created anew) when `DATABASE_URL` points at a server, else SQLite in
/// `dir`. Returns it with the backend's name for the report.
pub async fn database(dir: &std::path::Path, name: &str) -> (Db, String) {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            let admin = sqlx::PgPool::connect(&url).await.expect("PostgreSQL at DATABASE_URL");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await.expect("drop");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create");
            let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b).to_string();
            let db = Db::connect(&format!("{base}/{name}"), &Retry::default()).await.expect("connect");
            (db, "PostgreSQL".into())
        }
        _ => {
            let url = format!("sqlite://{}/calls.db", dir.display());
            (Db::connect(&url, &Retry::default()).await.expect("sqlite"), "SQLite".into())
        }
    }
}

/// Asterisk's own reload of what is loaded, through AMI, timed. Asterisk
/// refuses a reload while one is running ("The previous reload command
/// didn't finish yet"): this tries until one is accepted (for up to 2
/// minutes) and times that one.
pub async fn accepted_reload(probe: &asterisk_gitops::asterisk::Asterisk) -> std::time::Duration {
    use std::time::{Duration, Instant};
    let tried = Instant::now();
    loop {
        let t = Instant::now();
        match probe.reload().await {
            Ok(()) => return t.elapsed(),
            Err(e) => {
                assert!(tried.elapsed() < Duration::from_secs(120), "no reload accepted in 2 minutes: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
