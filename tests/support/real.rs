//! The harness of the tests on a real Asterisk 22 (`tests/real/`): a
//! daemon (`serve`) on its own Asterisk, on SQLite or PostgreSQL, reading a
//! directory or a git remote; waits; what Asterisk itself reports.

use asterisk_gitops::config::{AmiFileConfig, AriFileConfig, FileConfig, Overrides, SecretString, Settings};
use asterisk_real::{AMI_USER, ARI_USER, Asterisk, Build, Options};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const TOKEN: &str = "real-admin-token-42";
pub(crate) const HOOK: &str = "real-hook-secret-42";
pub(crate) const SEED_BODY: &str = r#"{"extension":"1001","password":"Soundz2025","displayName":"Test User","context":"from-internal","transport":"transport-udp","codecs":"ulaw,alaw,g729"}"#;

/// Where the daemon keeps its state: SQLite in its state directory, or a
/// fresh PostgreSQL database dropped at the end.
pub(crate) enum Store {
    Sqlite,
    Postgres { server: String, name: String },
}

impl Store {
    /// SQLite always; PostgreSQL too when DATABASE_URL points at one (CI).
    pub(crate) async fn both() -> Vec<Store> {
        let mut out = vec![Store::Sqlite];
        if let Some((db, server, name)) = super::db::postgres().await {
            db.close().await;
            out.push(Store::Postgres { server, name });
        }
        out
    }

    pub(crate) fn url(&self) -> Option<String> {
        match self {
            Store::Sqlite => None,
            Store::Postgres { server, name } => Some(super::db::replace_db(server, name)),
        }
    }

    pub(crate) fn label(&self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres { .. } => "postgres",
        }
    }

    pub(crate) async fn drop_db(&self) {
        if let Store::Postgres { server, name } = self
            && let Ok(admin) = sqlx::PgPool::connect(server).await
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
            admin.close().await;
        }
    }
}

/// What the daemon reads its specs from.
pub(crate) enum Source {
    /// A spec directory the test writes into.
    Dir,
    /// A bare git repository the test pushes to (webhook enabled).
    Git { url: String },
}

/// The `ami:` section for `ast`, as the README says.
pub(crate) fn ami_config(ast: &Asterisk) -> AmiFileConfig {
    AmiFileConfig {
        addr: Some(ast.ami_addr().to_string()),
        user: Some(AMI_USER.into()),
        secret: Some(SecretString::new(&ast.ami_secret)),
        ..Default::default()
    }
}

/// The `ari:` section for `ast`, as the README says.
pub(crate) fn ari_config(ast: &Asterisk) -> AriFileConfig {
    AriFileConfig {
        url: Some(ast.ari_url()),
        user: Some(ARI_USER.into()),
        password: Some(SecretString::new(&ast.ari_password)),
        ..Default::default()
    }
}

/// The `nodes:` entry `name` for `ast`: its AMI, ARI and managed file.
pub(crate) fn node_config(name: &str, ast: &Asterisk) -> asterisk_gitops::config::NodeFileConfig {
    asterisk_gitops::config::NodeFileConfig {
        name: name.into(),
        ami: Some(ami_config(ast)),
        ari: Some(ari_config(ast)),
        managed_file: Some(ast.managed_file()),
    }
}

/// `serve` on a real Asterisk, with AMI and ARI configured as the README says.
pub(crate) struct Daemon {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) specs: PathBuf,
    pub(crate) addr: SocketAddr,
    pub(crate) store: Store,
    pub(crate) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub(crate) http: reqwest::Client,
    /// Every response body, for the secret scan.
    pub(crate) seen: std::sync::Mutex<Vec<String>>,
    /// What it was started with, for [`Daemon::restart`].
    pub(crate) settings: Settings,
}

pub(crate) async fn asterisk(build: &Build, name: &str) -> Asterisk {
    Asterisk::start(build, Options::named(name)).await.unwrap_or_else(|e| panic!("Asterisk starts: {e}"))
}

impl Daemon {
    pub(crate) async fn start(ast: &Asterisk, store: Store, source: Source, specs: &str) -> Daemon {
        Daemon::start_with(ast, store, source, specs, |_| {}).await
    }

    pub(crate) async fn start_with(
        ast: &Asterisk,
        store: Store,
        source: Source,
        specs_yaml: &str,
        tweak: impl FnOnce(&mut FileConfig),
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs = dir.path().join("extensions.d");
        std::fs::create_dir_all(&specs).expect("mkdir");
        if !specs_yaml.is_empty() {
            std::fs::write(specs.join("team.yaml"), specs_yaml).expect("write specs");
        }
        let mut file = FileConfig {
            ami: Some(ami_config(ast)),
            ari: Some(ari_config(ast)),
            admin_token: Some(SecretString::new(TOKEN)),
            webhook_secret: Some(SecretString::new(HOOK)),
            sip_server: Some(ast.sip_addr().to_string()),
            ..Default::default()
        };
        tweak(&mut file);
        let mut flags = Overrides {
            state_dir: Some(dir.path().join("state")),
            spec_dir: Some(specs.clone()),
            managed_file: Some(ast.managed_file()),
            database_url: store.url(),
            ..Default::default()
        };
        if let Source::Git { url } = &source {
            flags.git_url = Some(url.clone());
        }
        let settings = Settings::resolve(flags, file, &|_| None).expect("settings");
        let (addr, stop, task) = crate::support::serve(settings.clone()).await;
        let mut d = Daemon {
            _dir: dir,
            specs,
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::new(),
            seen: Default::default(),
            settings,
        };
        d.wait_ready().await;
        d
    }

    /// Stops the daemon (as SIGTERM would) and starts it again on the same
    /// state directory and database, as an operator's restart.
    pub(crate) async fn restart(&mut self) {
        self.halt().await;
        self.start_again().await;
    }

    /// Stops the daemon, keeping its state, until [`start_again`](Self::start_again).
    pub(crate) async fn halt(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("joins").expect("serve ends cleanly");
        }
    }

    pub(crate) async fn start_again(&mut self) {
        let (addr, stop, task) = crate::support::serve(self.settings.clone()).await;
        self.addr = addr;
        self.stop = Some(stop);
        self.task = Some(task);
        self.wait_ready().await;
    }

    pub(crate) async fn wait_ready(&mut self) {
        let d = self;
        // Up once it answers /readyz (or it died at start: say why).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if d.task.as_ref().is_some_and(|t| t.is_finished()) {
                let r = d.task.take().expect("task").await;
                panic!("the daemon stopped at start: {r:?}");
            }
            if d.get("/readyz").await.0 == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the daemon did not answer /readyz within 30 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, url).bearer_auth(TOKEN).timeout(Duration::from_secs(60));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return (0, Value::String(format!("no answer: {e}"))),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        self.seen.lock().expect("lock").push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// Signs and posts a GitHub push webhook for main.
    pub(crate) async fn webhook(&self) -> u16 {
        let body = r#"{"ref":"refs/heads/main"}"#;
        let sig = asterisk_gitops::http::webhook::github_signature(body.as_bytes(), HOOK.as_bytes());
        let resp = self
            .http
            .post(format!("http://{}/hooks/git", self.addr))
            .header("X-Hub-Signature-256", sig)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the daemon answers");
        resp.status().as_u16()
    }

    /// The recorded runs, newest first (as `GET /runs` gives them).
    pub(crate) async fn runs(&self) -> Vec<Value> {
        self.get("/runs?limit=500").await.1.as_array().cloned().unwrap_or_default()
    }

    /// Waits for a recorded run that `pred` picks out (tests identify the
    /// run they caused: by revision, by a field their change set, by id).
    pub(crate) async fn run_where(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let runs = self.runs().await;
            if let Some(r) = runs.iter().find(|r| pred(r)) {
                let (_, detail) = self.get(&format!("/runs/{}", r["id"])).await;
                return detail;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after 60 s waiting for a run: {what}; runs: {runs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The highest run id recorded so far (0 when none): runs after a test's
    /// action have a higher one.
    pub(crate) async fn last_run_id(&self) -> i64 {
        self.runs().await.iter().filter_map(|r| r["id"].as_i64()).max().unwrap_or(0)
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("joins").expect("serve ends cleanly");
        }
        self.store.drop_db().await;
    }
}

/// Polls `f` until it is true; panics naming `what` after `within`.
pub(crate) async fn wait<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the real Asterisk says of an endpoint, through its own CLI (an
/// observer independent of the daemon's AMI client): `None` when it has none.
pub(crate) async fn endpoint(ast: &Asterisk, id: &str) -> Option<String> {
    let out = ast.cli(&format!("pjsip show endpoint {id}")).await;
    if out.contains("Unable to find object") { None } else { Some(out) }
}

/// The endpoint's codecs as Asterisk reports them (`(ulaw|alaw)`).
pub(crate) async fn codecs(ast: &Asterisk, id: &str) -> Option<String> {
    let out = endpoint(ast, id).await?;
    out.lines()
        .find(|l| l.trim_start().starts_with("allow "))
        .map(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()).unwrap_or_default())
}

/// The contacts Asterisk holds for an aor (`sip:...` URIs).
pub(crate) async fn contacts(ast: &Asterisk, aor: &str) -> Vec<String> {
    let out = ast.cli("pjsip show contacts").await;
    out.lines()
        .filter_map(|l| l.trim_start().strip_prefix("Contact:"))
        .map(str::trim)
        .filter(|l| l.starts_with(&format!("{aor}/")))
        .filter_map(|l| l.split_whitespace().next())
        .map(|s| s.split_once('/').map(|(_, u)| u.to_string()).unwrap_or_default())
        .collect()
}

/// The number of times Asterisk reloaded res_pjsip, from its log.
pub(crate) fn reloads(ast: &Asterisk) -> usize {
    ast.log().matches("Reloading module 'res_pjsip.so'").count()
}
