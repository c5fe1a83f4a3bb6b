//! A real Asterisk 22 for tests and benchmarks. Test support only: a
//! dev-dependency, never in the release binary.
//!
//! - [`build`] builds Asterisk from `ASTERISK_SRC_DIR` (default
//!   `../shared/asterisk/src` beside the repository) once per machine,
//!   through `scripts/build-asterisk.sh`, into a cache keyed by the
//!   archives' and the module selection's hashes.
//! - [`Asterisk::start`] starts an isolated instance: its own temporary
//!   directory, its own free ports for SIP, AMI and HTTP/ARI, configs made
//!   from the project's own `examples/asterisk/*.snippet` and
//!   `templates/extensions.conf.snippet` (so the examples are what the tests
//!   run), waits until it has fully booted, and stops it when dropped. When
//!   the test that owns it panics, its log is kept under
//!   `target/asterisk-logs/` and its tail printed.
//! - [`sipp`] runs the repository's sipp scenarios (`tests/sipp/`) as phones.
//! - [`baresip`] runs a real softphone (Debian's `baresip-core`, no sound
//!   card) that registers, answers, dials, crashes and comes back.
//! - [`netns`] builds a network of namespaces (a PBX, a NAT router, a phone
//!   behind it) for tests of phones behind NAT; [`Options::netns`] starts
//!   Asterisk inside it.
//!
//! [`require`] decides what a test does when a real Asterisk cannot be had:
//! under `CI=true` it fails, locally it prints a loud `SKIPPED` and the test
//! returns.

pub mod baresip;
pub mod netns;
pub mod sipp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The AMI user the instance defines (from `examples/asterisk/manager.conf.snippet`).
pub const AMI_USER: &str = "asterisk-gitops";
/// The ARI user the instance defines (from `examples/asterisk/ari.conf.snippet`).
pub const ARI_USER: &str = "asterisk-gitops";
/// A second AMI user the instance defines for tests only (same secret as
/// the daemon's, `write = system,call`): the call actions (`Atxfer`,
/// `Hangup`) a test uses to act as a phone's keypad, which the daemon's
/// least-privilege user may not.
pub const TEST_AMI_USER: &str = "asterisk-real-test";
/// The SIP realm Asterisk uses by default (md5Cred is hashed with it).
pub const REALM: &str = "asterisk";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| {
        // A crate two levels below the root, as in this workspace.
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    })
}

/// True when tests must not skip for a missing part (CI sets CI=true).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A finished build of Asterisk.
#[derive(Clone, Debug)]
pub struct Build {
    /// The install prefix (`sbin/asterisk`, `lib/asterisk/modules`, …).
    pub prefix: PathBuf,
}

impl Build {
    pub fn binary(&self) -> PathBuf {
        self.prefix.join("sbin/asterisk")
    }
}

/// Builds Asterisk once per machine (the script caches it) and once per
/// process (this caches the answer). Err says why there is none.
pub fn build() -> Result<Build, String> {
    static BUILD: OnceLock<Result<Build, String>> = OnceLock::new();
    BUILD.get_or_init(build_now).clone()
}

fn build_now() -> Result<Build, String> {
    let script = repo_root().join("scripts/build-asterisk.sh");
    if let Ok(prefix) = std::env::var("ASTERISK_PREFIX") {
        let b = Build { prefix: PathBuf::from(prefix) };
        return if b.binary().is_file() {
            Ok(b)
        } else {
            Err(format!("ASTERISK_PREFIX is set but {} does not exist", b.binary().display()))
        };
    }
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => {
            let prefix = stdout.lines().last().unwrap_or_default().trim().to_string();
            let b = Build { prefix: PathBuf::from(prefix) };
            if b.binary().is_file() {
                Ok(b)
            } else {
                Err(format!("the build script printed {} but there is no asterisk binary there", b.prefix.display()))
            }
        }
        Some(3) => Err("no Asterisk source directory (set ASTERISK_SRC_DIR; see scripts/build-asterisk.sh)".into()),
        _ => Err(format!("building Asterisk failed ({}); see the output above", out.status)),
    }
}

/// The build and sipp, or `None` after a loud SKIPPED (a panic under CI).
pub fn require(test: &str) -> Option<Build> {
    let missing = match (build(), sipp::binary()) {
        (Ok(b), Some(_)) => return Some(b),
        (Err(e), _) => e,
        (Ok(_), None) => "sipp is not installed (Debian's sip-tester)".to_string(),
    };
    if in_ci() {
        panic!("{test}: a real Asterisk is required under CI=true, and: {missing}");
    }
    eprintln!("\n*** SKIPPED {test}: no real Asterisk: {missing} ***\n");
    None
}

/// A port nobody on this machine listens on (TCP and UDP), picked from a
/// range this process walks through, so parallel tests never get the same one.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        // Spread processes apart: start from a pid-derived offset.
        let base = 20_000 + (std::process::id() % 500) as u16 * 40;
        let _ = NEXT.compare_exchange(0, base, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        let mut p = NEXT.fetch_add(1, Ordering::Relaxed);
        if p >= 60_000 {
            NEXT.store(20_000, Ordering::Relaxed);
            p = 20_000;
        }
        let tcp = TcpListener::bind(("127.0.0.1", p)).is_ok();
        let udp = UdpSocket::bind(("127.0.0.1", p)).is_ok();
        if tcp && udp {
            return p;
        }
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// Names the instance in logs and kept log files.
    pub name: String,
    /// The managed file's first contents (an empty file by default: a
    /// missing `#include` would empty PJSIP).
    pub managed: String,
    /// Extra sections for pjsip.conf, before the `#include`.
    pub pjsip_extra: String,
    /// Lines for sorcery.conf (none by default: file objects only).
    pub sorcery: String,
    /// Define the `trunk` endpoint the dialplan dials outbound numbers
    /// through (default true; off for tests that count every endpoint).
    pub trunk: bool,
    /// Run inside a network namespace (see [`netns`]), bound to an address
    /// there instead of 127.0.0.1. `None`: the root namespace, loopback.
    pub netns: Option<InNamespace>,
    /// RTP ports of its own (default 20: 10 calls' worth of media). Over
    /// 20, a range of this size from 40000 up, shared by instances that ask
    /// for as many (Asterisk tries another port when one is taken).
    pub rtp_ports: u16,
    /// Read PJSIP endpoints, auths and aors from this PostgreSQL database
    /// (`apply.target: realtime`): res_pgsql.conf, extconfig.conf and
    /// sorcery.conf from `examples/asterisk/*realtime*` and its neighbours.
    pub realtime: Option<RealtimeDb>,
    /// Set `systemname` in asterisk.conf (default true): uniqueids (and so
    /// linkedids) are then `<name>-<epoch>.<counter>`; without it they are
    /// `<epoch>.<counter>`, the counter from 0 in each process
    /// (`main/channel_internal_api.c`), so two instances hand out the same.
    pub systemname: bool,
}

/// A PostgreSQL database Asterisk reads its realtime tables from.
#[derive(Clone, Debug)]
pub struct RealtimeDb {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: String,
}

impl RealtimeDb {
    /// From a `postgres://user[:password]@host[:port]/dbname` URL.
    pub fn from_url(url: &str) -> Option<RealtimeDb> {
        let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))?;
        let (auth, rest) = rest.rsplit_once('@')?;
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let (hostport, dbname) = rest.split_once('/')?;
        let dbname = dbname.split('?').next()?;
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (hostport, 5432),
        };
        Some(RealtimeDb {
            host: host.into(),
            port,
            dbname: dbname.into(),
            user: user.into(),
            password: password.into(),
        })
    }
}

/// Where an instance runs when it is not on loopback: inside the network
/// namespace `name` (`ip netns exec`), with SIP, AMI and HTTP/ARI bound to
/// `ip`, and AMI permitting only `client` (the address the test's daemon
/// connects from).
#[derive(Clone, Debug)]
pub struct InNamespace {
    pub name: String,
    pub ip: Ipv4Addr,
    pub client: Ipv4Addr,
}

/// The sorcery.conf of `apply.target: ari`: the astdb wizard (family
/// `asterisk-gitops`) first for endpoint, auth and aor, the config file
/// after it (`examples/asterisk/sorcery.conf.snippet`, as the README says).
pub fn astdb_sorcery() -> std::io::Result<String> {
    read_example("examples/asterisk/sorcery.conf.snippet")
}

impl Options {
    /// An instance set up for the ari target: [`astdb_sorcery`].
    pub fn live(name: &str) -> std::io::Result<Options> {
        Ok(Options { sorcery: astdb_sorcery()?, ..Options::named(name) })
    }

    pub fn named(name: &str) -> Options {
        Options {
            name: name.into(),
            managed: String::new(),
            pjsip_extra: String::new(),
            sorcery: String::new(),
            trunk: true,
            netns: None,
            rtp_ports: 20,
            realtime: None,
            systemname: true,
        }
    }

    /// An instance set up for the realtime target, reading `db`.
    pub fn realtime(name: &str, db: RealtimeDb) -> std::io::Result<Options> {
        Ok(Options {
            sorcery: read_example("examples/asterisk/sorcery.conf.realtime.snippet")?,
            realtime: Some(db),
            ..Options::named(name)
        })
    }
}

/// A running Asterisk. Dropped: killed, its directory removed (its log kept
/// under target/asterisk-logs/ when the thread is panicking).
pub struct Asterisk {
    pub build: Build,
    pub name: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub sip_port: u16,
    pub ami_port: u16,
    pub http_port: u16,
    /// A second SIP port on which a test may run a sipp "carrier": the
    /// dialplan's `Dial(PJSIP/${EXTEN}@trunk)` goes there.
    pub trunk_port: u16,
    pub ami_secret: String,
    pub ari_password: String,
    /// Where it runs when not on loopback (boxed: the struct stays small).
    place: Option<Box<InNamespace>>,
    starts: u32,
}

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

fn read_example(rel: &str) -> std::io::Result<String> {
    let p = repo_root().join(rel);
    std::fs::read_to_string(&p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

/// Replaces `from` in `text`, failing when the example no longer has it
/// (the example changed: the harness must follow).
fn must_replace(text: &str, from: &str, to: &str, file: &str) -> std::io::Result<String> {
    if !text.contains(from) {
        return Err(std::io::Error::other(format!("{file} no longer contains {from:?}: update asterisk-real")));
    }
    Ok(text.replace(from, to))
}

impl Asterisk {
    /// Starts an instance and waits until it has fully booted.
    pub async fn start(build: &Build, opts: Options) -> std::io::Result<Asterisk> {
        let mut a = Asterisk::spawn(build, opts)?;
        a.wait_booted().await?;
        Ok(a)
    }

    /// Starts an instance and returns at once, while it boots (for tests of
    /// what a client does to an Asterisk that is not ready yet); see
    /// [`wait_booted`](Self::wait_booted).
    pub fn spawn(build: &Build, opts: Options) -> std::io::Result<Asterisk> {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new().prefix(&format!("ast-{n}-")).tempdir()?;
        let mut a = Asterisk {
            build: build.clone(),
            name: format!("{}-{}-{n}", opts.name, std::process::id()),
            dir,
            child: None,
            sip_port: free_port(),
            ami_port: free_port(),
            http_port: free_port(),
            trunk_port: free_port(),
            ami_secret: format!("ami-secret-{n}-{}", std::process::id()),
            ari_password: format!("ari-password-{n}-{}", std::process::id()),
            place: opts.netns.clone().map(Box::new),
            starts: 0,
        };
        a.write_configs(&opts)?;
        a.launch()?;
        Ok(a)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Asterisk's configuration directory.
    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// The file pjsip.conf includes: the daemon's managed file.
    pub fn managed_file(&self) -> PathBuf {
        self.etc().join("pjsip_gitops.conf")
    }

    /// The address SIP, AMI and HTTP are bound to (127.0.0.1 unless
    /// [`Options::netns`] says otherwise).
    pub fn ip(&self) -> IpAddr {
        self.place.as_ref().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |p| IpAddr::V4(p.ip))
    }

    pub fn ami_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.ami_port)
    }

    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.sip_port)
    }

    pub fn ari_url(&self) -> String {
        format!("http://{}", SocketAddr::new(self.ip(), self.http_port))
    }

    /// Asterisk's log (`messages.log`: notices, warnings, errors, verbose).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/messages.log")).unwrap_or_default()
    }

    fn write_configs(&self, opts: &Options) -> std::io::Result<()> {
        let d = self.dir.path();
        let etc = self.etc();
        for sub in ["etc", "log", "run", "spool", "lib", "keys", "agi"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let prefix = &self.build.prefix;
        let datadir = prefix.join("var/lib/asterisk");
        let w = |name: &str, body: String| std::fs::write(etc.join(name), body);
        w(
            "asterisk.conf",
            format!(
                "[directories]\n\
                 astetcdir => {etc}\n\
                 astmoddir => {moddir}\n\
                 astvarlibdir => {lib}\n\
                 astdbdir => {lib}\n\
                 astkeydir => {keys}\n\
                 astdatadir => {data}\n\
                 astagidir => {agi}\n\
                 astspooldir => {spool}\n\
                 astrundir => {run}\n\
                 astlogdir => {log}\n\
                 astsbindir => {sbin}\n\
                 [options]\n\
                 verbose = 3\n\
                 nocolor = yes\n\
                 {systemname}",
                etc = etc.display(),
                moddir = prefix.join("lib/asterisk/modules").display(),
                lib = d.join("lib").display(),
                keys = d.join("keys").display(),
                data = datadir.display(),
                agi = d.join("agi").display(),
                spool = d.join("spool").display(),
                run = d.join("run").display(),
                log = d.join("log").display(),
                sbin = prefix.join("sbin").display(),
                systemname = if opts.systemname { format!("systemname = {}\n", self.name) } else { String::new() },
            ),
        )?;
        w(
            "modules.conf",
            "[modules]\nautoload = yes\nnoload = res_pjsip_stir_shaken.so\nnoload = res_stir_shaken.so\n".into(),
        )?;
        w("logger.conf", "[general]\n[logfiles]\nmessages.log => notice,warning,error,verbose\n".into())?;
        // rtp.conf: a port range of its own per instance keeps parallel
        // instances from colliding on RTP.
        let (rtp, n) = if opts.rtp_ports <= 20 {
            (30_000 + (self.sip_port % 1000) * 20, 20)
        } else {
            let n = opts.rtp_ports.min(10_000);
            (40_000 + (self.sip_port % (20_000 / n).max(1)) * n, n)
        };
        w("rtp.conf", format!("[general]\nrtpstart = {rtp}\nrtpend = {}\n", rtp + n - 1))?;

        // The operator's files, from the project's examples.
        let f = "examples/asterisk/manager.conf.snippet";
        let manager = read_example(f)?;
        let manager = must_replace(&manager, "port = 5038", &format!("port = {}", self.ami_port), f)?;
        let mut manager = must_replace(&manager, "CHANGE-ME-long-random-secret", &self.ami_secret, f)?;
        let f = "examples/asterisk/http.conf.snippet";
        let mut http =
            must_replace(&read_example(f)?, "bindport = 8088", &format!("bindport = {}", self.http_port), f)?;
        if let Some(ns) = &opts.netns {
            let f = "examples/asterisk/manager.conf.snippet";
            manager = must_replace(&manager, "bindaddr = 127.0.0.1", &format!("bindaddr = {}", ns.ip), f)?;
            manager = must_replace(
                &manager,
                "permit = 127.0.0.1/255.255.255.255",
                &format!("permit = {}/255.255.255.255", ns.client),
                f,
            )?;
            let f = "examples/asterisk/http.conf.snippet";
            http = must_replace(&http, "bindaddr = 127.0.0.1", &format!("bindaddr = {}", ns.ip), f)?;
        }
        // The tests' own AMI user (TEST_AMI_USER), beside the daemon's.
        let test_user = format!(
            "\n[{TEST_AMI_USER}]\nsecret = {}\ndeny = 0.0.0.0/0.0.0.0\npermit = {}/255.255.255.255\nread = system,call\nwrite = system,call\n",
            self.ami_secret,
            opts.netns.as_ref().map_or(Ipv4Addr::LOCALHOST, |ns| ns.client),
        );
        w("manager.conf", manager + &test_user)?;
        w("http.conf", http)?;
        let f = "examples/asterisk/ari.conf.snippet";
        w("ari.conf", must_replace(&read_example(f)?, "CHANGE-ME-long-random-password", &self.ari_password, f)?)?;
        let include = read_example("examples/asterisk/pjsip.conf.snippet")?;
        let trunk = if opts.trunk {
            format!(
                "; The carrier the dialplan dials outbound numbers through (a sipp in tests).\n\
                 [trunk]\ntype = endpoint\ncontext = from-trunk\ndisallow = all\nallow = ulaw,alaw\n\
                 transport = transport-udp\naors = trunk\n\n\
                 [trunk]\ntype = aor\ncontact = sip:{addr}\n\n\
                 ; Calls from the carrier come from that port (a sipp \"provider\" in tests).\n\
                 [trunk]\ntype = identify\nendpoint = trunk\nmatch = {addr}\n\n",
                addr = SocketAddr::new(self.ip(), self.trunk_port)
            )
        } else {
            String::new()
        };
        w(
            "pjsip.conf",
            format!(
                "[global]\ntype = global\n\n\
                 [transport-udp]\ntype = transport\nprotocol = udp\nbind = {sip}\n\n\
                 {trunk}{extra}\n{include}",
                sip = self.sip_addr(),
                extra = opts.pjsip_extra,
            ),
        )?;
        w("cel.conf", read_example("examples/asterisk/cel.conf.snippet")?)?;
        let dialplan = read_example("templates/extensions.conf.snippet")?;
        w("extensions.conf", format!("[general]\nstatic = yes\nwriteprotect = yes\n\n{dialplan}"))?;
        // This build has no sound packages: the attended transfer's prompt
        // ("pbx-transfer") would fail it, so it plays none.
        let features = read_example("examples/asterisk/features.conf.snippet")?;
        let features =
            must_replace(&features, "[general]\n", "[general]\ntransferannouncesound =\n", "features.conf.snippet")?;
        w("features.conf", features)?;
        // Read by res_pjsip_config_wizard; absent, it logs an error per reload.
        w("pjsip_wizard.conf", String::new())?;
        if !opts.sorcery.is_empty() {
            w("sorcery.conf", opts.sorcery.clone())?;
        }
        if let Some(db) = &opts.realtime {
            w("extconfig.conf", read_example("examples/asterisk/extconfig.conf.snippet")?)?;
            let f = "examples/asterisk/res_pgsql.conf.snippet";
            let mut pg = read_example(f)?;
            for (from, to) in [
                ("dbhost = 127.0.0.1", format!("dbhost = {}", db.host)),
                ("dbport = 5432", format!("dbport = {}", db.port)),
                ("dbname = asterisk", format!("dbname = {}", db.dbname)),
                ("dbuser = asterisk", format!("dbuser = {}", db.user)),
                ("dbpass = CHANGE-ME-database-password", format!("dbpass = {}", db.password)),
            ] {
                pg = must_replace(&pg, from, &to, f)?;
            }
            w("res_pgsql.conf", pg)?;
        }
        std::fs::write(self.managed_file(), &opts.managed)?;
        Ok(())
    }

    /// `asterisk -C <its config>`; `inside`: run in its network namespace
    /// (the CLI's control socket is a file, reachable from anywhere).
    fn command_in(&self, inside: bool) -> Command {
        let mut c = match (&self.place, inside) {
            (Some(place), true) => netns::exec(&place.name, self.build.binary()),
            _ => Command::new(self.build.binary()),
        };
        c.arg("-C").arg(self.etc().join("asterisk.conf"));
        c.env("LD_LIBRARY_PATH", self.build.prefix.join("lib"));
        c.stdin(Stdio::null());
        c
    }

    fn command(&self) -> Command {
        self.command_in(false)
    }

    async fn boot(&mut self) -> std::io::Result<()> {
        self.launch()?;
        self.wait_booted().await
    }

    fn launch(&mut self) -> std::io::Result<()> {
        self.starts += 1;
        let console =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("log/console.log"))?;
        let mut c = self.command_in(true);
        c.args(["-f", "-n"]).stdout(console.try_clone()?).stderr(console).kill_on_drop(true);
        self.child = Some(spawn_for_process(c)?);
        Ok(())
    }

    /// Waits until the instance has fully booted (`core waitfullybooted`).
    pub async fn wait_booted(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(std::io::Error::other(format!(
                    "Asterisk {} exited during boot ({status}); its log ends:\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            if self.ctl_exists() {
                let out = self.cli_raw("core waitfullybooted").await;
                if out.as_deref().is_ok_and(|o| o.contains("fully booted")) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "Asterisk {} did not boot within 90 s; its log ends:\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn ctl_exists(&self) -> bool {
        self.dir.path().join("run/asterisk.ctl").exists()
    }

    async fn cli_raw(&self, cmd: &str) -> std::io::Result<String> {
        let out = tokio::time::timeout(Duration::from_secs(30), self.command().args(["-rx", cmd]).output())
            .await
            .map_err(|_| std::io::Error::other(format!("asterisk -rx {cmd:?} timed out")))??;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "asterisk -rx {cmd:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a CLI command (`asterisk -rx`) and returns its output.
    pub async fn cli(&self, cmd: &str) -> String {
        match self.cli_raw(cmd).await {
            Ok(s) => s,
            Err(e) => panic!("{}: {e}", self.name),
        }
    }

    /// Stops Asterisk as an operator would (`core stop now`) and waits.
    pub async fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let _ = self.cli_raw("core stop now").await;
        if let Some(mut child) = self.child.take() {
            match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill().await;
                }
            }
        }
        let _ = std::fs::remove_file(self.dir.path().join("run/asterisk.ctl"));
    }

    /// Kills Asterisk (SIGKILL) and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        let _ = std::fs::remove_file(self.dir.path().join("run/asterisk.ctl"));
        let _ = std::fs::remove_file(self.dir.path().join("run/asterisk.pid"));
    }

    /// Starts it again on the same ports and configs (after `stop` or `kill`).
    pub async fn start_again(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            return Err(std::io::Error::other("still running"));
        }
        self.boot().await
    }

    /// Whether the process is running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How many times it booted.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until the log has a line containing `needle` after byte
    /// `from` (take `log().len()` before causing it); panics after `within`.
    pub async fn wait_log(&self, from: usize, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if let Some(line) = log.get(from..).and_then(|s| s.lines().find(|l| l.contains(needle))) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{}: no log line containing {needle:?} within {within:?}; the log ends:\n{}",
                self.name,
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Where test output is kept (`CARGO_TARGET_DIR`, or `target/`).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"))
}

impl Drop for Asterisk {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            let keep = target_dir().join("asterisk-logs").join(&self.name);
            if std::fs::create_dir_all(&keep).is_ok() {
                for f in ["messages.log", "console.log"] {
                    let _ = std::fs::copy(self.dir.path().join("log").join(f), keep.join(f));
                }
                let _ = std::fs::copy(self.managed_file(), keep.join("pjsip_gitops.conf"));
            }
            eprintln!("\nAsterisk {} log kept in {}; it ends:\n{}\n", self.name, keep.display(), self.log_tail(25));
        }
    }
}

/// Starts `c` so that the child gets SIGKILL when this test process ends,
/// also when it is killed outright (a timeout, ^C twice, a SIGKILLed flake
/// hunt) and cannot run the kill-on-drop: `PR_SET_PDEATHSIG`, set between
/// fork and exec. That signal follows the *thread* that forked the child,
/// not the process, so the fork happens on one thread of this crate's that
/// lives as long as the process ([`spawner`]): forked from a test's runtime
/// worker, a sipp or an Asterisk was killed whenever that worker thread
/// ended (tokio retires workers, e.g. around `block_in_place`, and
/// `spawn_blocking` threads end when idle). The child is registered with
/// the caller's runtime, as `Command::spawn` there would. `ip netns exec`
/// keeps the setting: it execs the program in place.
pub fn spawn_for_process(mut c: Command) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe and touches only the child's own
    // state between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| std::io::Error::other(format!("a child process is started from a tokio runtime: {e}")))?;
    let (reply, answer) = std::sync::mpsc::channel();
    spawner()
        .send(SpawnJob { command: c, runtime, reply })
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer.recv().map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

struct SpawnJob {
    command: Command,
    runtime: tokio::runtime::Handle,
    reply: std::sync::mpsc::Sender<std::io::Result<Child>>,
}

/// The one thread every child is forked from; it never ends before the
/// process does.
fn spawner() -> &'static std::sync::mpsc::Sender<SpawnJob> {
    static SPAWNER: OnceLock<std::sync::mpsc::Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new().name("asterisk-real spawner".into()).spawn(move || {
            for mut job in rx {
                let _in_runtime = job.runtime.enter();
                let _ = job.reply.send(job.command.spawn());
            }
        });
        if let Err(e) = started {
            // The jobs sent to `tx` then fail with "the spawner thread is gone".
            eprintln!("asterisk-real: cannot start the spawner thread: {e}");
        }
        tx
    })
}
