//! The daemon end to end for the API and browser tests: `serve` on a spec
//! directory, with the stand-in's AMI and ARI behind it.

use asterisk_gitops::config::{AmiFileConfig, AriFileConfig, FileConfig, Overrides, SecretString, Settings};
use asterisk_standin::{StandIn, StandInConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

pub const TOKEN: &str = "web-admin-token-42";
pub struct Daemon {
    pub _dir: tempfile::TempDir,
    pub standin: StandIn,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
    /// Every response body, for the secret scan.
    pub seen: std::sync::Mutex<Vec<String>>,
}

impl Daemon {
    pub async fn start() -> Daemon {
        Daemon::start_with(false).await
    }

    pub async fn start_with(read_only: bool) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs = dir.path().join("extensions.d");
        std::fs::create_dir_all(&specs).expect("mkdir");
        std::fs::write(
            specs.join("team.yaml"),
            "# The support team\ndefaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n  - extension: \"1002\"\n    displayName: Agent Two\n    md5Cred: 0123456789abcdef0123456789abcdef\n",
        )
        .expect("write");
        let ast = dir.path().join("asterisk");
        let (standin, ami) = standin_in(&ast).await;
        let file = FileConfig {
            ami: Some(ami),
            ari: Some(AriFileConfig {
                url: Some(standin.ari_url()),
                user: Some("gitops".into()),
                password: Some(SecretString::new("gitops-secret")),
                ..Default::default()
            }),
            // The stand-in plays Stasis calls over ARI; it has no CEL.
            call_log: Some(asterisk_gitops::config::CallSource::Stasis),
            admin_token: Some(SecretString::new(TOKEN)),
            sip_server: Some("pbx.example.com:5060".into()),
            ..Default::default()
        };
        let flags = Overrides {
            state_dir: Some(dir.path().join("state")),
            spec_dir: Some(specs),
            managed_file: Some(ast.join("pjsip_gitops.conf")),
            ..Default::default()
        };
        let mut settings = Settings::resolve(flags, file, &|_| None).expect("settings");
        settings.read_only = read_only;
        let (addr, stop, task) = crate::support::serve(settings).await;
        let d = Daemon {
            _dir: dir,
            standin,
            addr,
            stop: Some(stop),
            task: Some(task),
            http: reqwest::Client::new(),
            seen: Default::default(),
        };
        let c = d.standin.control();
        // The first run and the call logger; a daemon that stops at start
        // instead says why rather than leaving the wait to time out.
        let deadline = tokio::time::Instant::now() + WITHIN;
        while !(c.endpoints() == ["1002"] && c.app_connected("callcenter")) {
            if d.task.as_ref().is_some_and(|t| t.is_finished()) {
                let mut d = d;
                let r = d.task.take().expect("task").await;
                panic!("the daemon stopped at start: {r:?}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {WITHIN:?} waiting for the first run (1002 in Asterisk: {:?}) and the call logger (connected: {})",
                c.endpoints(),
                c.app_connected("callcenter")
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        d
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, url).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.expect("the daemon answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        self.seen.lock().expect("lock").push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("joins").expect("serve ends cleanly");
        }
    }
}

/// How long a wait for something the test caused may take.
pub const WITHIN: Duration = Duration::from_secs(30);

pub async fn wait<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {WITHIN:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A stand-in Asterisk with the operator's pjsip.conf in `dir`, and the
/// `ami:` section of a config file that reaches it.
pub async fn standin_in(dir: &std::path::Path) -> (StandIn, AmiFileConfig) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let conf = asterisk_standin::write_operator_conf(dir, "pjsip_gitops.conf").expect("conf");
    let standin =
        StandIn::start(StandInConfig { pjsip_conf: conf, user: "gitops".into(), secret: "gitops-secret".into() })
            .await
            .expect("stand-in");
    let ami = AmiFileConfig {
        addr: Some(standin.ami_addr.to_string()),
        user: Some("gitops".into()),
        secret: Some(SecretString::new("gitops-secret")),
        ..Default::default()
    };
    (standin, ami)
}
