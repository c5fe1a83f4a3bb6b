//! Soak test: `serve` (the release binary, a child process) on PostgreSQL,
//! following a git repository, against the Asterisk stand-in (AMI and ARI,
//! in this process), under a steady mixed load for a fixed time:
//!
//! - API reads (extension list and detail, status, runs, calls);
//! - API writes with the admin token (create, update, delete of numbers
//!   5000–5099: each one a commit the daemon pushes to the repository);
//! - an operator editing `extensions.d/ops.yaml` in their own clone on
//!   disk, committing and pushing, then sending a signed webhook;
//! - calls replayed through the stand-in's ARI (`StasisStart` → the daemon
//!   continues and subscribes → answer → hang up).
//!
//! Every few seconds it samples the daemon's RSS and open file descriptors
//! (`/proc/<pid>/status`, `/proc/<pid>/fd`); it records every request's
//! latency. At the end it checks (exit status 1 if one fails):
//!
//! - memory and fds flat: the mean of the last sixth of the run (the last
//!   5 minutes of 30) within `--flat-pct` (default 15 %) of the mean of the
//!   second sixth (minutes 5–10), fds also within 3 descriptors;
//! - p99 latency stable: per sixth of the run (5-minute windows at 30), for
//!   reads and for writes, no window's p99 above 3× the median window's p99
//!   (plus 20 ms, so a few-ms p99 does not trip on noise);
//! - every write accounted for: the extensions table and the spec files on
//!   the branch hold exactly the extensions the soak's successful writes
//!   leave (with their display names), once the daemon has caught up;
//! - every replayed call has exactly one row, completed as answered.
//!
//! Run it with `scripts/soak.sh` (builds the release binary and this
//! example); `DATABASE_URL` must point at a PostgreSQL server (a database
//! of its own is created and dropped).

use asterisk_standin::{StandIn, StandInConfig};
use git2::{Repository, Signature};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "soak-admin-token-0123456789";
const HOOK: &str = "soak-hook-secret-0123456789";
const MD5: &str = "0123456789abcdef0123456789abcdef";
const APP: &str = "callcenter";
const TEAM: std::ops::Range<u32> = 1001..1201;
const API_NUMBERS: std::ops::Range<u32> = 5000..5100;
const OPS_NUMBERS: std::ops::Range<u32> = 6000..6050;

struct Args {
    minutes: f64,
    daemon: PathBuf,
    out: PathBuf,
    flat_pct: f64,
}

fn args() -> Args {
    let mut a = Args {
        minutes: 30.0,
        daemon: PathBuf::from("target/release/asterisk-gitops"),
        out: PathBuf::from("target/soak"),
        flat_pct: 15.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| fail(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--minutes" => a.minutes = value().parse().unwrap_or_else(|_| fail("--minutes takes a number")),
            "--daemon" => a.daemon = PathBuf::from(value()),
            "--out" => a.out = PathBuf::from(value()),
            "--flat-pct" => a.flat_pct = value().parse().unwrap_or_else(|_| fail("--flat-pct takes a number")),
            _ => fail(&format!(
                "unknown argument {arg}; usage: soak [--minutes N] [--daemon PATH] [--out DIR] [--flat-pct P]"
            )),
        }
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("soak: {msg}");
    std::process::exit(2)
}

/// One timed request.
#[derive(Clone)]
struct Sample {
    at: f64,
    class: &'static str,
    op: &'static str,
    ms: f64,
    ok: bool,
}

#[derive(Default)]
struct Shared {
    samples: Mutex<Vec<Sample>>,
    /// number → display name, for the numbers the soak writes (None: absent).
    api: Mutex<BTreeMap<u32, Option<String>>>,
    ops: Mutex<BTreeMap<u32, String>>,
    calls: Mutex<Vec<String>>,
    failures: Mutex<BTreeMap<String, u64>>,
    resources: Mutex<Vec<(f64, u64, u64)>>,
}

impl Shared {
    fn record(&self, start: Instant, t0: Instant, class: &'static str, op: &'static str, ok: bool) {
        let s = Sample {
            at: t0.elapsed().as_secs_f64() - start.elapsed().as_secs_f64(),
            class,
            op,
            ms: start.elapsed().as_secs_f64() * 1000.0,
            ok,
        };
        lock(&self.samples).push(s);
    }
    fn failed(&self, what: String) {
        *lock(&self.failures).entry(what).or_default() += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A tiny deterministic PRNG (xorshift64*): the soak needs variety, not quality.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ops_file(names: &BTreeMap<u32, String>) -> String {
    let mut s = String::from(
        "# Edited by the soak's operator.\ndefaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n",
    );
    for (n, name) in names {
        s.push_str(&format!("  - extension: \"{n}\"\n    displayName: {name}\n    md5Cred: {MD5}\n"));
    }
    s
}

fn team_file() -> String {
    let mut s = String::from(
        "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw, alaw]}\nextensions:\n",
    );
    for n in TEAM {
        s.push_str(&format!("  - extension: \"{n}\"\n    displayName: Agent {n}\n    md5Cred: {MD5}\n"));
    }
    s
}

fn commit_all(repo: &Repository, files: &[(&str, String)], message: &str) -> Result<(), git2::Error> {
    let root = repo.workdir().ok_or_else(|| git2::Error::from_str("bare"))?.to_path_buf();
    let mut index = repo.index()?;
    for (path, text) in files {
        let p = root.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| git2::Error::from_str(&e.to_string()))?;
        }
        std::fs::write(&p, text).map_err(|e| git2::Error::from_str(&e.to_string()))?;
        index.add_path(Path::new(path))?;
    }
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = Signature::now("Olga Operator", "olga@example.com")?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?;
    Ok(())
}

/// Fetches main and resets the clone to it.
fn sync(repo: &Repository) -> Result<(), git2::Error> {
    repo.find_remote("origin")?.fetch(&["+refs/heads/main:refs/remotes/origin/main"], None, None)?;
    let head = repo.find_reference("refs/remotes/origin/main")?.peel_to_commit()?;
    repo.reset(head.as_object(), git2::ResetType::Hard, None)?;
    Ok(())
}

/// Pushes HEAD to main; false when the remote moved (rejected). Like a
/// git host does, the branch moves only if it is still where this clone
/// last saw it: libgit2's own file:// push checks, then sets it by force,
/// and would overwrite a push the daemon made in between (the daemon's
/// write-back moves the branch the same way: `writeback::move_branch_if_unmoved`).
fn push(repo: &Repository) -> Result<bool, git2::Error> {
    let head = repo.head()?.peel_to_commit()?.id();
    // No remote-tracking ref yet (the first push): the branch must not exist.
    let from = repo.find_reference("refs/remotes/origin/main").ok().and_then(|r| r.target());
    let staging = format!("refs/soak/push/{head}");
    let rejected = Arc::new(AtomicBool::new(false));
    let r = rejected.clone();
    let mut cb = git2::RemoteCallbacks::new();
    cb.push_update_reference(move |_, status| {
        if status.is_some() {
            r.store(true, Ordering::SeqCst);
        }
        Ok(())
    });
    let mut opts = git2::PushOptions::new();
    opts.remote_callbacks(cb);
    let mut origin = repo.find_remote("origin")?;
    origin.push(&[format!("{head}:{staging}").as_str()], Some(&mut opts))?;
    if rejected.load(Ordering::SeqCst) {
        return Ok(false);
    }
    let url = origin.url().unwrap_or_default().to_string();
    let bare = Repository::open(url.strip_prefix("file://").unwrap_or(&url))?;
    let moved = asterisk_gitops::git::writeback::move_branch_if_unmoved(&bare, "main", head, from, "soak: ops edit");
    if let Ok(mut r) = bare.find_reference(&staging) {
        let _ = r.delete();
    }
    Ok(moved?.is_ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("no free port: {e}")))
}

fn replace_db(url: &str, name: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && i > url.find("://").map_or(0, |j| j + 2) => {
            let (base, rest) = url.split_at(i);
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{base}/{name}{query}")
        }
        _ => format!("{url}/{name}"),
    }
}

fn rss_and_fds(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss_kb, fds))
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() { f64::NAN } else { xs.iter().sum::<f64>() / xs.len() as f64 }
}

fn p99(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let i = ((xs.len() as f64) * 0.99).ceil() as usize;
    xs[i.clamp(1, xs.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let server = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| fail("DATABASE_URL must point at a PostgreSQL server (postgres://…)"));
    if !args.daemon.is_file() {
        fail(&format!("{} is not built (cargo build --release)", args.daemon.display()));
    }
    std::fs::create_dir_all(&args.out).unwrap_or_else(|e| fail(&format!("{}: {e}", args.out.display())));
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("tempdir: {e}")));
    let root = dir.path();

    // The database.
    let name = format!("agt_soak_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&server).await.unwrap_or_else(|e| fail(&format!("PostgreSQL: {e}")));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| fail(&format!("create database: {e}")));
    let db_url = replace_db(&server, &name);

    // The repository and the operator's clone.
    let bare = root.join("pbx.git");
    Repository::init_bare(&bare).unwrap_or_else(|e| fail(&format!("git: {e}")));
    let ops = Repository::init(root.join("olga")).unwrap_or_else(|e| fail(&format!("git: {e}")));
    ops.remote("origin", &format!("file://{}", bare.display())).unwrap_or_else(|e| fail(&format!("git: {e}")));
    let shared = Arc::new(Shared::default());
    {
        let mut names = lock(&shared.ops);
        for n in OPS_NUMBERS.clone().step_by(2) {
            names.insert(n, format!("Ops {n} v0"));
        }
        let files = [("extensions.d/team.yaml", team_file()), ("extensions.d/ops.yaml", ops_file(&names))];
        commit_all(&ops, &files, "Seed").unwrap_or_else(|e| fail(&format!("git: {e}")));
        if !push(&ops).unwrap_or_else(|e| fail(&format!("git push: {e}"))) {
            fail("the first push was rejected");
        }
    }

    // The stand-in.
    let ast = root.join("asterisk");
    std::fs::create_dir_all(&ast).unwrap_or_else(|e| fail(&format!("mkdir: {e}")));
    let conf = asterisk_standin::write_operator_conf(&ast, "pjsip_gitops.conf")
        .unwrap_or_else(|e| fail(&format!("conf: {e}")));
    let standin =
        StandIn::start(StandInConfig { pjsip_conf: conf, user: "gitops".into(), secret: "gitops-secret".into() })
            .await
            .unwrap_or_else(|e| fail(&format!("stand-in: {e}")));
    let control = standin.control();

    // The daemon (callLog stasis: the stand-in plays Stasis calls over ARI; it has no CEL).
    let port = free_port();
    let config = json!({
        "stateDir": root.join("state"),
        "managedFile": ast.join("pjsip_gitops.conf"),
        "listen": format!("127.0.0.1:{port}"),
        "adminToken": TOKEN,
        "webhookSecret": HOOK,
        "ami": {"addr": standin.ami_addr.to_string(), "user": "gitops", "secret": "gitops-secret"},
        "ari": {"url": standin.ari_url(), "user": "gitops", "password": "gitops-secret", "app": APP},
        "callLog": "stasis",
        "git": {"url": format!("file://{}", bare.display()), "branch": "main", "path": "extensions.d", "interval": 60},
        "reconcile": {"interval": 30},
    });
    let config_path = root.join("asterisk-gitops.yaml");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap_or_default())
        .unwrap_or_else(|e| fail(&format!("config: {e}")));
    let log = std::fs::File::create(args.out.join("daemon.log")).unwrap_or_else(|e| fail(&format!("log: {e}")));
    let mut child = std::process::Command::new(&args.daemon)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("DATABASE_URL", &db_url)
        .env("ASTERISK_GITOPS_LOG", "info")
        .stdout(log.try_clone().unwrap_or_else(|e| fail(&format!("log: {e}"))))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {}: {e}", args.daemon.display())));
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_else(|e| fail(&e.to_string()));

    let outcome = run(&args, &shared, &http, &base, pid, &ops, &bare, &control, &db_url).await;

    let _ = child.kill();
    let _ = child.wait();
    standin.stop();
    drop(standin);
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
    admin.close().await;
    match outcome {
        Ok(true) => println!("soak: PASSED"),
        Ok(false) => {
            println!("soak: FAILED (see above)");
            std::process::exit(1)
        }
        Err(e) => {
            println!("soak: ERROR: {e}");
            std::process::exit(1)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    args: &Args,
    shared: &Arc<Shared>,
    http: &reqwest::Client,
    base: &str,
    pid: u32,
    ops: &Repository,
    bare: &Path,
    control: &asterisk_standin::Control,
    db_url: &str,
) -> Result<bool, String> {
    // Ready: every seeded extension applied and the call logger connected.
    let t = Instant::now();
    loop {
        let applied = control.endpoints().len();
        let expected = TEAM.len() + OPS_NUMBERS.clone().step_by(2).count();
        if applied == expected && control.app_connected(APP) {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("the daemon did not apply the seed within 120 s ({applied}/{expected} endpoints)"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("soak: daemon {pid} ready in {:.1} s; running for {} min", t.elapsed().as_secs_f64(), args.minutes);

    let t0 = Instant::now();
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    // Sampler.
    {
        let (shared, stop) = (shared.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Some((rss, fds)) = rss_and_fds(pid) {
                    lock(&shared.resources).push((t0.elapsed().as_secs_f64(), rss, fds));
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }
    // Readers.
    for r in 0..2u64 {
        let (shared, stop, http, base) = (shared.clone(), stop.clone(), http.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (r + 1));
            let paths: [(&'static str, &str); 5] = [
                ("GET /extensions", "/extensions?limit=50"),
                ("GET /extensions/:id", "/extensions/1001"),
                ("GET /status", "/status"),
                ("GET /calls", "/calls?limit=20"),
                ("GET /runs", "/runs?limit=10"),
            ];
            while !stop.load(Ordering::SeqCst) {
                let (op, path) = paths[rng.below(paths.len() as u64) as usize];
                let start = Instant::now();
                let outcome = match http.get(format!("{base}{path}")).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.bytes().await {
                            Ok(_) if status.is_success() => Ok(()),
                            Ok(body) => {
                                Err(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])))
                            }
                            Err(e) => Err(format!("{status}, body: {e}")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                shared.record(start, t0, "read", op, outcome.is_ok());
                if let Err(e) = outcome {
                    shared.failed(format!("{op} → {e}"));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }));
    }
    // API writer.
    {
        let (shared, stop, http, base) = (shared.clone(), stop.clone(), http.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0xD1B5_4A32_D192_ED03);
            let mut version = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let n = API_NUMBERS.start + rng.below(u64::from(API_NUMBERS.end - API_NUMBERS.start)) as u32;
                let current = lock(&shared.api).get(&n).cloned().flatten();
                version += 1;
                let name = format!("Soak {n} v{version}");
                let (op, req, after): (&'static str, _, Option<String>) = match current {
                    None => (
                        "POST /extensions",
                        http.post(format!("{base}/extensions")).json(&json!({
                            "extension": n.to_string(), "displayName": name, "context": "from-internal",
                            "transport": "transport-udp", "codecs": "ulaw,alaw", "md5Cred": MD5,
                        })),
                        Some(name),
                    ),
                    Some(_) if rng.below(10) < 7 => (
                        "PUT /extensions/:id",
                        http.put(format!("{base}/extensions/{n}")).json(&json!({"displayName": name})),
                        Some(name),
                    ),
                    Some(_) => ("DELETE /extensions/:id", http.delete(format!("{base}/extensions/{n}")), None),
                };
                let start = Instant::now();
                let resp = req.bearer_auth(TOKEN).send().await;
                let status = resp.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                let ok = (200..300).contains(&status);
                let body = match resp {
                    Ok(r) => r.bytes().await.unwrap_or_default(),
                    Err(_) => Default::default(),
                };
                shared.record(start, t0, "write", op, ok);
                if ok {
                    lock(&shared.api).insert(n, after);
                } else {
                    // The daemon's reason, so the report says why a write was refused.
                    let why: String = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(|m| m.chars().take(160).collect()))
                        .unwrap_or_default();
                    shared.failed(if why.is_empty() {
                        format!("{op} → {status}")
                    } else {
                        format!("{op} → {status}: {why}")
                    });
                }
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }));
    }
    // The operator: edit ops.yaml in the clone on disk, commit, push, webhook.
    let ops_path = ops.workdir().map(Path::to_path_buf).ok_or("the clone is bare")?;
    {
        let (shared, stop, http, base) = (shared.clone(), stop.clone(), http.clone(), base.to_string());
        tasks.push(tokio::task::spawn(async move {
            let mut rng = Rng(0xA076_1D64_78BD_642F);
            let mut version = 0u64;
            let repo = match Repository::open(&ops_path) {
                Ok(r) => r,
                Err(e) => {
                    shared.failed(format!("open the clone: {e}"));
                    return;
                }
            };
            while !stop.load(Ordering::SeqCst) {
                version += 1;
                let mut names = lock(&shared.ops).clone();
                let n = OPS_NUMBERS.start + rng.below(u64::from(OPS_NUMBERS.end - OPS_NUMBERS.start)) as u32;
                if names.contains_key(&n) && rng.below(4) == 0 {
                    names.remove(&n);
                } else {
                    names.insert(n, format!("Ops {n} v{version}"));
                }
                let start = Instant::now();
                let mut pushed = false;
                for _ in 0..10 {
                    let step = sync(&repo)
                        .and_then(|()| {
                            commit_all(
                                &repo,
                                &[("extensions.d/ops.yaml", ops_file(&names))],
                                &format!("Ops edit {version}"),
                            )
                        })
                        .and_then(|()| push(&repo));
                    match step {
                        Ok(true) => {
                            pushed = true;
                            break;
                        }
                        Ok(false) => continue,
                        Err(e) => {
                            shared.failed(format!("git: {}", e.message()));
                            break;
                        }
                    }
                }
                shared.record(start, t0, "git", "edit + commit + push", pushed);
                if !pushed {
                    shared.failed("ops push".into());
                    continue;
                }
                *lock(&shared.ops) = names;
                let body = r#"{"ref":"refs/heads/main"}"#;
                let sig = asterisk_gitops::http::webhook::github_signature(body.as_bytes(), HOOK.as_bytes());
                let start = Instant::now();
                let status = http
                    .post(format!("{base}/hooks/git"))
                    .header("X-Hub-Signature-256", sig)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                shared.record(start, t0, "write", "POST /hooks/git", status == 202);
                if status != 202 {
                    shared.failed(format!("webhook → {status}"));
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        }));
    }
    // Calls.
    {
        let (shared, stop, control) = (shared.clone(), stop.clone(), control.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x5851_F42D_4C95_7F2D);
            while !stop.load(Ordering::SeqCst) {
                let caller = (TEAM.start + rng.below(u64::from(TEAM.end - TEAM.start)) as u32).to_string();
                let Some(id) = control.start_call(APP, &caller, "Soak caller", "from-internal", "998901234567") else {
                    shared.failed("start_call: the app is not connected".into());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                let start = Instant::now();
                // The daemon subscribes to the channel and continues it; only then
                // would Asterisk tell it about the answer and the hang-up.
                while !(control.subscribed(&id) && control.continued(&id)) && start.elapsed() < Duration::from_secs(30)
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let handled = control.subscribed(&id) && control.continued(&id);
                shared.record(start, t0, "call", "StasisStart → subscribed + continued", handled);
                if !handled {
                    shared.failed("a call was not handled within 30 s".into());
                }
                control.answer(&id);
                tokio::time::sleep(Duration::from_millis(50 + rng.below(200))).await;
                control.hang_up(&id, 16);
                lock(&shared.calls).push(id);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    // Progress.
    while t0.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(60).min(total.saturating_sub(t0.elapsed()))).await;
        let n = lock(&shared.samples).len();
        let last = lock(&shared.resources).last().copied();
        println!(
            "soak: {:5.1} min, {n} requests, {} calls, rss {} KiB, fds {}",
            t0.elapsed().as_secs_f64() / 60.0,
            lock(&shared.calls).len(),
            last.map_or(0, |l| l.1),
            last.map_or(0, |l| l.2)
        );
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();

    // Let the daemon catch up: one more webhook, then wait for the state.
    let body = r#"{"ref":"refs/heads/main"}"#;
    let sig = asterisk_gitops::http::webhook::github_signature(body.as_bytes(), HOOK.as_bytes());
    let _ = http.post(format!("{base}/hooks/git")).header("X-Hub-Signature-256", sig).body(body).send().await;
    let expected = expected_state(shared);
    let pool = sqlx::PgPool::connect(db_url).await.map_err(|e| e.to_string())?;
    let calls = lock(&shared.calls).clone();
    let caught_up = Instant::now();
    let (db_state, call_rows) = loop {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as("SELECT number, display_name FROM extensions")
            .fetch_all(&pool)
            .await
            .map_err(|e| e.to_string())?;
        let db_state: BTreeMap<String, Option<String>> = rows.into_iter().collect();
        let call_rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT channel_id, count(*), count(*) FILTER (WHERE end_time IS NOT NULL AND disposition = 'answered') FROM calls GROUP BY channel_id",
        )
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?;
        let done = call_rows.iter().filter(|r| r.2 == 1).count();
        if (db_state == expected && done >= calls.len()) || caught_up.elapsed() > Duration::from_secs(120) {
            break (db_state, call_rows);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    pool.close().await;
    let files_state = branch_state(bare)?;

    // Analysis.
    let mut ok = true;
    let mut report = String::new();
    let mut say = |line: String| {
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    };
    let samples = lock(&shared.samples).clone();
    let windows = 6usize;
    let width = elapsed / windows as f64;
    say(format!(
        "soak: {:.1} min, {} requests, {} calls replayed, catch-up {:.1} s",
        elapsed / 60.0,
        samples.len(),
        calls.len(),
        caught_up.elapsed().as_secs_f64()
    ));
    let mut ops_seen: Vec<&'static str> = samples.iter().map(|s| s.op).collect();
    ops_seen.sort();
    ops_seen.dedup();
    say("| operation | count | failed | p50 ms | p99 ms | max ms |".into());
    say("|---|---|---|---|---|---|".into());
    for op in ops_seen {
        let mut ms: Vec<f64> = samples.iter().filter(|s| s.op == op).map(|s| s.ms).collect();
        let failed = samples.iter().filter(|s| s.op == op && !s.ok).count();
        ms.sort_by(|a, b| a.total_cmp(b));
        let p50 = ms[ms.len() / 2];
        let max = ms[ms.len() - 1];
        say(format!("| {op} | {} | {failed} | {p50:.1} | {:.1} | {max:.1} |", ms.len(), p99(&mut ms)));
    }
    for class in ["read", "write"] {
        let mut per: Vec<f64> = Vec::new();
        for w in 0..windows {
            let (lo, hi) = (w as f64 * width, (w + 1) as f64 * width);
            let mut ms: Vec<f64> =
                samples.iter().filter(|s| s.class == class && s.at >= lo && s.at < hi).map(|s| s.ms).collect();
            per.push(p99(&mut ms));
        }
        let mut sorted: Vec<f64> = per.iter().copied().filter(|x| x.is_finite()).collect();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        let worst = sorted.last().copied().unwrap_or(f64::NAN);
        let stable = worst <= 3.0 * median + 20.0;
        ok &= stable;
        let shown: Vec<String> = per.iter().map(|p| format!("{p:.1}")).collect();
        say(format!(
            "{} p99 {class} latency per {:.1}-min window (ms): {} — worst {worst:.1} vs 3 × median {median:.1} + 20",
            if stable { "ok  " } else { "FAIL" },
            width / 60.0,
            shown.join(", ")
        ));
    }
    let resources = lock(&shared.resources).clone();
    let window_mean = |w: usize, pick: &dyn Fn(&(f64, u64, u64)) -> f64| {
        let (lo, hi) = (w as f64 * width, (w + 1) as f64 * width);
        mean(&resources.iter().filter(|r| r.0 >= lo && r.0 < hi + 0.001).map(pick).collect::<Vec<_>>())
    };
    let rss = |r: &(f64, u64, u64)| r.1 as f64;
    let fds = |r: &(f64, u64, u64)| r.2 as f64;
    let (rss_a, rss_b) = (window_mean(1, &rss), window_mean(windows - 1, &rss));
    let (fd_a, fd_b) = (window_mean(1, &fds), window_mean(windows - 1, &fds));
    let rss_flat = (rss_b - rss_a).abs() <= rss_a * args.flat_pct / 100.0;
    let fd_flat = (fd_b - fd_a).abs() <= (fd_a * args.flat_pct / 100.0).max(3.0);
    ok &= rss_flat && fd_flat;
    let peak = resources.iter().map(|r| r.1).max().unwrap_or(0);
    let first = resources.first().copied().unwrap_or_default();
    say(format!(
        "{} RSS: start {} KiB, mean {rss_a:.0} KiB in window 2, {rss_b:.0} KiB in the last ({:+.1} %, limit ±{} %), peak {peak} KiB",
        if rss_flat { "ok  " } else { "FAIL" },
        first.1,
        (rss_b - rss_a) / rss_a * 100.0,
        args.flat_pct
    ));
    say(format!(
        "{} fds: start {}, mean {fd_a:.1} in window 2, {fd_b:.1} in the last (limit ±{} % or ±3)",
        if fd_flat { "ok  " } else { "FAIL" },
        first.2,
        args.flat_pct
    ));
    let writes_ok = db_state == expected;
    ok &= writes_ok;
    say(format!(
        "{} extensions table: {} rows, expected {} (the seed, and what the soak's successful writes leave)",
        if writes_ok { "ok  " } else { "FAIL" },
        db_state.len(),
        expected.len()
    ));
    if !writes_ok {
        for (k, v) in &expected {
            if db_state.get(k) != Some(v) {
                say(format!("     {k}: expected {v:?}, table has {:?}", db_state.get(k)));
            }
        }
        for k in db_state.keys().filter(|k| !expected.contains_key(*k)) {
            say(format!("     {k}: in the table, not expected"));
        }
    }
    let files_ok = files_state == expected;
    ok &= files_ok;
    say(format!(
        "{} spec files on main: {} extensions, expected {}",
        if files_ok { "ok  " } else { "FAIL" },
        files_state.len(),
        expected.len()
    ));
    let rows: BTreeMap<&str, (i64, i64)> = call_rows.iter().map(|r| (r.0.as_str(), (r.1, r.2))).collect();
    let missing = calls.iter().filter(|c| !rows.contains_key(c.as_str())).count();
    let not_once = calls.iter().filter(|c| rows.get(c.as_str()).is_some_and(|r| r.0 != 1)).count();
    let incomplete = calls.iter().filter(|c| rows.get(c.as_str()).is_some_and(|r| r.1 != 1)).count();
    let extra = rows.len().saturating_sub(calls.len());
    let calls_ok = missing == 0 && not_once == 0 && incomplete == 0 && extra == 0;
    ok &= calls_ok;
    say(format!(
        "{} calls: {} replayed, {} rows; missing {missing}, not exactly one row {not_once}, not completed as answered {incomplete}, rows for calls not made {extra}",
        if calls_ok { "ok  " } else { "FAIL" },
        calls.len(),
        rows.len()
    ));
    let failures = lock(&shared.failures).clone();
    say(format!("failed requests (a refused write changes nothing, and the ledger left it out): {failures:?}"));
    let csv: String = std::iter::once("at_s,rss_kib,fds".to_string())
        .chain(resources.iter().map(|r| format!("{:.1},{},{}", r.0, r.1, r.2)))
        .collect::<Vec<_>>()
        .join("\n");
    let _ = std::fs::write(args.out.join("resources.csv"), csv);
    let _ = std::fs::write(args.out.join("report.txt"), report);
    Ok(ok)
}

/// The extensions the spec files should declare: the seed's team, the
/// operator's current ops.yaml, and the API numbers whose last successful
/// write left them present.
fn expected_state(shared: &Shared) -> BTreeMap<String, Option<String>> {
    let mut m: BTreeMap<String, Option<String>> = TEAM.map(|n| (n.to_string(), Some(format!("Agent {n}")))).collect();
    for (n, name) in lock(&shared.ops).iter() {
        m.insert(n.to_string(), Some(name.clone()));
    }
    for (n, name) in lock(&shared.api).iter() {
        if let Some(name) = name {
            m.insert(n.to_string(), Some(name.clone()));
        }
    }
    m
}

/// What the spec files on the branch's head declare (number → display name).
fn branch_state(bare: &Path) -> Result<BTreeMap<String, Option<String>>, String> {
    let repo = Repository::open_bare(bare).map_err(|e| e.to_string())?;
    let head = repo.find_reference("refs/heads/main").and_then(|r| r.peel_to_commit()).map_err(|e| e.to_string())?;
    let tree = head.tree().map_err(|e| e.to_string())?;
    let dir = tree.get_path(Path::new("extensions.d")).and_then(|e| e.to_object(&repo)).map_err(|e| e.to_string())?;
    let dir = dir.as_tree().ok_or("extensions.d is not a directory")?;
    let mut sources = Vec::new();
    for entry in dir.iter() {
        let name = entry.name().unwrap_or_default().to_string();
        if let Ok(obj) = entry.to_object(&repo)
            && let Some(blob) = obj.as_blob()
        {
            sources.push((name.clone(), PathBuf::from(&name), Ok(blob.content().to_vec())));
        }
    }
    let policy = asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(Path::new("extensions.d"));
    let loaded = asterisk_gitops::core::spec::load::load_sources(sources, &policy);
    if loaded.has_errors() {
        return Err(format!("the branch does not validate: {:?}", loaded.diagnostics));
    }
    Ok(loaded.set.extensions.iter().map(|e| (e.extension.clone(), e.display_name.clone())).collect())
}
