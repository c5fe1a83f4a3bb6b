//! Applying a plan of 10k new extensions in one transaction, on SQLite and
//! (when DATABASE_URL points at one) PostgreSQL.
//!
//!     DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench db

use asterisk_gitops::core::spec::{self, LoadOptions};
use asterisk_gitops::db::{Db, Retry};
use asterisk_gitops::reconcile::{AppliedRow, Outcome, RunRecord, Trigger};

fn main() {
    divan::main();
}

fn rows(n: usize) -> Vec<AppliedRow<'static>> {
    let dir = tempfile::tempdir().expect("tempdir");
    asterisk_gitops::estate::write(dir.path(), n).expect("estate");
    let loaded = spec::load_paths(&[dir.path().to_path_buf()], &LoadOptions::default());
    loaded
        .set
        .extensions
        .iter()
        .map(|e| {
            let md5 = "0123456789abcdef0123456789abcdef".to_string();
            AppliedRow { secret_md5: md5, extension: std::borrow::Cow::Owned((**e).clone()) }
        })
        .collect()
}

fn record() -> RunRecord {
    RunRecord {
        trigger: Trigger::Cli,
        revision: None,
        subject: None,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        outcome: Outcome::Applied,
        plan: None,
        error: None,
        diagnostics: vec![],
        reloaded: false,
        warning: None,
        reasons: vec![],
        rollback_failed: false,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

#[divan::bench(sample_count = 10)]
fn apply_10k_new_sqlite(bencher: divan::Bencher) {
    let rt = runtime();
    let rows = rows(10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    bencher
        .with_inputs(|| {
            n += 1;
            let url = format!("sqlite://{}/b{n}.db", dir.path().display());
            rt.block_on(Db::connect(&url, &Retry::default())).expect("db")
        })
        .bench_local_values(|db| {
            rt.block_on(db.commit_run(&record(), &rows, &[], &Default::default())).expect("commit")
        });
}

#[divan::bench(sample_count = 10)]
fn apply_10k_new_postgres(bencher: divan::Bencher) {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("DATABASE_URL not set: skipping the PostgreSQL benchmark");
        return;
    };
    let rt = runtime();
    let rows = rows(10_000);
    let db = rt.block_on(Db::connect(&url, &Retry::default())).expect("db");
    bencher
        .with_inputs(|| {
            let Db::Postgres(p) = &db else { panic!("postgres") };
            rt.block_on(sqlx::query("DELETE FROM extensions").execute(p)).expect("empty the table");
        })
        .bench_local_values(|()| {
            rt.block_on(db.commit_run(&record(), &rows, &[], &Default::default())).expect("commit")
        });
    let Db::Postgres(p) = &db else { return };
    let _ = rt.block_on(sqlx::query("DELETE FROM extensions").execute(p));
}
