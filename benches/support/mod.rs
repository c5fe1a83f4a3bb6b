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

/// What a benchmark's daemon talks to besides AMI.
#[derive(Clone, Copy, Default)]
pub struct DaemonOptions<'a> {
    /// Configure ARI too.
    pub ari: bool,
    /// `apply.target` (`file` or `ari`); `None`: the default.
    pub target: Option<&'a str>,
    /// The admin token for the API's writes; `None`: no writes.
    pub token: Option<&'a str>,
    /// `nodes:` instead of the top-level ami/ari: each of these Asterisks a
    /// node named after it, in this order (empty: `ast` alone).
    pub nodes: &'a [asterisk_real::Asterisk],
}

/// The settings of a `serve` against a real Asterisk `ast`: its AMI (and
/// ARI), the spec directory `specs`, state under `state`, the managed file
/// Asterisk includes, and no periodic resync during the measurement.
pub fn daemon_settings(
    ast: &asterisk_real::Asterisk,
    state: &std::path::Path,
    specs: &std::path::Path,
    o: DaemonOptions<'_>,
) -> asterisk_gitops::config::Settings {
    use asterisk_gitops::config::{
        AmiFileConfig, ApplyFileConfig, AriFileConfig, FileConfig, NodeFileConfig, Overrides, SecretString, Settings,
    };
    let ami = |ast: &asterisk_real::Asterisk| AmiFileConfig {
        addr: Some(ast.ami_addr().to_string()),
        user: Some(asterisk_real::AMI_USER.into()),
        secret: Some(SecretString::new(&ast.ami_secret)),
        timeout: Some(60.0),
        ..Default::default()
    };
    let ari = |ast: &asterisk_real::Asterisk| {
        o.ari.then(|| AriFileConfig {
            url: Some(ast.ari_url()),
            user: Some(asterisk_real::ARI_USER.into()),
            password: Some(SecretString::new(&ast.ari_password)),
            timeout: Some(30.0),
            ..Default::default()
        })
    };
    let nodes: Vec<NodeFileConfig> = o
        .nodes
        .iter()
        .map(|n| NodeFileConfig {
            name: n.name.clone(),
            ami: Some(ami(n)),
            ari: ari(n),
            managed_file: Some(n.managed_file()),
        })
        .collect();
    let alone = nodes.is_empty();
    let file = FileConfig {
        ami: alone.then(|| ami(ast)),
        ari: if alone { ari(ast) } else { None },
        nodes: (!alone).then_some(nodes),
        apply: o.target.map(|t| ApplyFileConfig { target: Some(t.into()), ..Default::default() }),
        admin_token: o.token.map(SecretString::new),
        ..Default::default()
    };
    let flags = Overrides {
        state_dir: Some(state.to_path_buf()),
        spec_dir: Some(specs.to_path_buf()),
        managed_file: Some(ast.managed_file()),
        ..Default::default()
    };
    let mut settings = Settings::resolve(flags, file, &|_| None).expect("settings");
    settings.reconcile.interval = std::time::Duration::from_secs(3600);
    settings
}

/// The real Asterisk the benchmarks run against (built by
/// `scripts/build-asterisk.sh`); without one the benchmark says why and exits 1.
pub fn real_asterisk() -> asterisk_real::Build {
    match asterisk_real::build() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("no real Asterisk to benchmark: {e}");
            std::process::exit(1);
        }
    }
}
