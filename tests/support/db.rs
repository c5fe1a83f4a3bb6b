//! The state store's test databases: a fresh SQLite one always, a fresh
//! PostgreSQL one when DATABASE_URL points at a server (required under
//! CI=true), and `on_both` to run one body on each.

use super::in_ci;
use asterisk_gitops::db::{Db, Retry};
use std::future::Future;

/// A fresh SQLite database in a temporary directory.
pub async fn sqlite() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/state/test.db", dir.path().display());
    (Db::connect(&url, &Retry::default()).await.expect("sqlite connects"), dir)
}

/// The PostgreSQL server URL, or None (loudly) when there is none to test against.
pub fn pg_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(u) if u.starts_with("postgres") => Some(u),
        _ => {
            assert!(!in_ci(), "CI=true but DATABASE_URL does not point at PostgreSQL: the PostgreSQL tests cannot run");
            // Written past the test harness's capture, so it shows even when the test passes.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: DATABASE_URL is not a postgres:// URL; the PostgreSQL variants of the db tests did not run"
            );
            None
        }
    }
}

/// A fresh PostgreSQL database for one test, dropped by `drop_pg`.
pub async fn postgres() -> Option<(Db, String, String)> {
    let server = pg_url()?;
    let admin = sqlx::PgPool::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at DATABASE_URL is unreachable: {e}"));
    let name = format!("agt_{}_{}", std::process::id(), uuid_ish());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
    admin.close().await;
    let url = replace_db(&server, &name);
    let db = Db::connect(&url, &Retry::default()).await.expect("postgres connects");
    Some((db, server, name))
}

pub async fn drop_pg(db: Db, server: &str, name: &str) {
    db.close().await;
    if let Ok(admin) = sqlx::PgPool::connect(server).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
        admin.close().await;
    }
}

pub fn uuid_ish() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{t}_{}", N.fetch_add(1, Ordering::Relaxed))
}

pub fn replace_db(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs `body` on SQLite, then on PostgreSQL when there is one.
pub async fn on_both<F, Fut>(body: F)
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let (db, _dir) = sqlite().await;
    body(db).await;
    if let Some((db, server, name)) = postgres().await {
        body(db.clone()).await;
        drop_pg(db, &server, &name).await;
    }
}
