//! What the benchmarks share (each includes this with `#[path]`).

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
