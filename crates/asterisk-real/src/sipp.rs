//! sipp (Debian's `sip-tester`) as the phones, running the repository's
//! scenarios in `tests/sipp/`: `register.xml` (digest auth; expires 0
//! unregisters), `call.xml` (an authenticated call held for a while, then
//! BYE), `answer.xml` (the called side: rings, answers, waits for BYE).
//! Every sipp answers OPTIONS (qualify), INFO, NOTIFY and UPDATE with 200
//! (`-aa`), as a live phone does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::process::{Child, Command};

/// The sipp binary, if installed.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("sipp")).find(|p| p.is_file())
}

/// A scenario file of the repository.
pub fn scenario(name: &str) -> PathBuf {
    crate::repo_root().join("tests/sipp").join(format!("{name}.xml"))
}

/// What a sipp run ended with.
#[derive(Debug)]
pub struct Outcome {
    /// sipp's exit code: 0 every call succeeded, 1 one failed, others fatal.
    pub code: Option<i32>,
    /// sipp's own log: its errors and every SIP message sent and received.
    pub log: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// One phone: an extension, its password, and the local address and port
/// it uses (127.0.0.1 unless a test in network namespaces says otherwise).
#[derive(Clone, Debug)]
pub struct Phone {
    pub extension: String,
    pub password: String,
    pub ip: IpAddr,
    pub port: u16,
    pub user_agent: String,
}

impl Phone {
    /// A phone on a free local port.
    pub fn new(extension: &str, password: &str) -> Phone {
        Phone {
            extension: extension.into(),
            password: password.into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: crate::free_port(),
            user_agent: format!("sipp-{extension}"),
        }
    }

    /// REGISTER (expires 3600) against `server`; Ok when it got 200.
    pub async fn register(&self, server: SocketAddr) -> Outcome {
        self.register_for(server, 3600).await
    }

    /// REGISTER with the given expiry (0 removes the contact).
    pub async fn register_for(&self, server: SocketAddr, expires: u32) -> Outcome {
        let (mut c, log) = self.sipp("register", server);
        c.args(["-key", "expires", &expires.to_string(), "-key", "ua", &self.user_agent]);
        finish(c, log, Duration::from_secs(30)).await
    }

    /// Calls `dial`, holds the answered call for `hold`, hangs up.
    pub async fn call(&self, server: SocketAddr, dial: &str, hold: Duration) -> Outcome {
        let (mut c, log) = self.sipp("call", server);
        c.args(["-key", "dial", dial, "-d", &hold.as_millis().to_string()]);
        finish(c, log, hold + Duration::from_secs(40)).await
    }

    /// Calls `dial` expecting no answer (`call_rejected.xml`: a 486, 480,
    /// 487, 404, 603 or 503 ends it); Ok when it ended that way.
    pub async fn call_unanswered(&self, server: SocketAddr, dial: &str) -> Outcome {
        let (mut c, log) = self.sipp("call_rejected", server);
        c.args(["-key", "dial", dial]);
        finish(c, log, Duration::from_secs(60)).await
    }

    /// Calls `dial` and stays on through re-INVITEs (a transfer), hanging
    /// up 4 s after the last one (`call_transferred.xml`).
    pub async fn call_transferred(&self, server: SocketAddr, dial: &str) -> Outcome {
        let (mut c, log) = self.sipp("call_transferred", server);
        c.args(["-key", "dial", dial]);
        finish(c, log, Duration::from_secs(60)).await
    }

    /// Calls `dial` and stays on (answering re-INVITEs) until Asterisk
    /// hangs up on it (`call_until_bye.xml`): another party ends the call.
    pub async fn call_until_hung_up(&self, server: SocketAddr, dial: &str) -> Outcome {
        let (mut c, log) = self.sipp("call_until_bye", server);
        c.args(["-key", "dial", dial]);
        finish(c, log, Duration::from_secs(90)).await
    }

    /// Places `n` calls to `dial` from this phone, `rate` a second, each
    /// held for `hold` once answered (`call.xml` with `-m n -l n -r rate`);
    /// Ok when every one succeeded.
    pub async fn call_many(&self, server: SocketAddr, dial: &str, hold: Duration, n: usize, rate: usize) -> Outcome {
        let (mut c, log) = self.sipp_calls("call", server, false);
        let (n, rate) = (n.to_string(), rate.to_string());
        c.args(["-key", "dial", dial, "-d", &hold.as_millis().to_string()]);
        c.args(["-m", &n, "-l", &n, "-r", &rate]);
        finish(c, log, hold + Duration::from_secs(90)).await
    }

    /// As [`call_many`](Self::call_many) for calls that are not answered (`call_rejected.xml`).
    pub async fn call_many_unanswered(&self, server: SocketAddr, dial: &str, n: usize, rate: usize) -> Outcome {
        let (mut c, log) = self.sipp_calls("call_rejected", server, false);
        let (n, rate) = (n.to_string(), rate.to_string());
        c.args(["-key", "dial", dial, "-m", &n, "-l", &n, "-r", &rate]);
        finish(c, log, Duration::from_secs(90)).await
    }

    /// Starts a phone that answers every call until dropped (`answer_many.xml`).
    pub fn answer_many(&self) -> Answering {
        play_at("answer_many", self.ip, self.port, &[])
    }

    /// Starts a phone that answers every call with 486 until dropped (`busy_many.xml`).
    pub fn busy_many(&self) -> Answering {
        play_at("busy_many", self.ip, self.port, &[])
    }

    /// Starts a phone that rings for every call until dropped (`ring_many.xml`).
    pub fn ring_many(&self) -> Answering {
        play_at("ring_many", self.ip, self.port, &[])
    }

    /// Starts answering one call on this phone's port (register first, from
    /// the same port, so Asterisk's contact is this one).
    pub fn answer(&self) -> Answering {
        answer_at(self.ip, self.port)
    }

    /// Starts a phone that answers one call with 486 Busy Here (`busy.xml`).
    pub fn busy(&self) -> Answering {
        play_at("busy", self.ip, self.port, &[])
    }

    /// Starts a phone that rings and is never picked up (`ring.xml`): the
    /// caller's Dial timeout ends it with CANCEL.
    pub fn ring(&self) -> Answering {
        play_at("ring", self.ip, self.port, &[])
    }

    /// Starts a phone that answers one call, talks until 1.5 s pass
    /// without a re-INVITE, then blind transfers the caller to `refer_to`
    /// with REFER (`answer_refer.xml`).
    pub fn answer_and_transfer(&self, refer_to: &str) -> Answering {
        play_at("answer_refer", self.ip, self.port, &["-key", "refer_to", refer_to])
    }

    /// Starts a phone that answers one call and hangs it up itself once 5 s
    /// pass without a re-INVITE (`answer_hangup.xml`).
    pub fn answer_and_hang_up(&self) -> Answering {
        play_at("answer_hangup", self.ip, self.port, &[])
    }

    fn sipp(&self, name: &str, server: SocketAddr) -> (Command, PathBuf) {
        self.sipp_calls(name, server, true)
    }

    fn sipp_calls(&self, name: &str, server: SocketAddr, one_call: bool) -> (Command, PathBuf) {
        let (mut c, log) = base_calls(name, self.ip, self.port, one_call);
        c.arg(server.to_string()).args(["-s", &self.extension, "-au", &self.extension, "-ap", &self.password]);
        (c, log)
    }
}

/// A call from the carrier: from local `port` (the trunk's, which its
/// identify section matches, so not challenged), caller id `from`, to the
/// DID `dial`, held for `hold` once answered (`call_in.xml`).
pub async fn call_in_from(port: u16, server: SocketAddr, from: &str, dial: &str, hold: Duration) -> Outcome {
    let (mut c, log) = base("call_in", IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    c.arg(server.to_string()).args(["-s", from, "-key", "dial", dial, "-d", &hold.as_millis().to_string()]);
    finish(c, log, hold + Duration::from_secs(40)).await
}

/// A sipp answering every call on `port` until dropped (a carrier on `trunk_port`).
pub fn answer_many_on(port: u16) -> Answering {
    play_at("answer_many", IpAddr::V4(Ipv4Addr::LOCALHOST), port, &[])
}

/// A sipp answering one call on `port` (e.g. the carrier on `trunk_port`).
pub fn answer_on(port: u16) -> Answering {
    answer_at(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

fn answer_at(ip: IpAddr, port: u16) -> Answering {
    play_at("answer", ip, port, &[])
}

/// Starts a called-side scenario (it ends itself with `stop_now`, exit 97).
fn play_at(name: &str, ip: IpAddr, port: u16, args: &[&str]) -> Answering {
    let (mut c, log) = base(name, ip, port);
    c.args(args);
    match crate::spawn_for_process(c) {
        Ok(child) => Answering { child: Some(child), log, port },
        Err(e) => panic!("cannot start sipp: {e}"),
    }
}

/// A sipp that answers one call; `done` waits for it to finish.
pub struct Answering {
    child: Option<Child>,
    log: PathBuf,
    pub port: u16,
}

impl Answering {
    /// Waits for the answered call to be hung up (or `within` to pass).
    pub async fn done(mut self, within: Duration) -> Outcome {
        let Some(mut child) = self.child.take() else { return Outcome { code: None, log: String::new() } };
        let code = match tokio::time::timeout(within, child.wait()).await {
            // answer.xml ends with `stop_now` once its call is over, which
            // exits 97; a call that went wrong leaves sipp waiting instead.
            Ok(Ok(status)) if status.code() == Some(97) => Some(0),
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = child.kill().await;
                None
            }
        };
        Outcome { code, log: read_logs(&self.log) }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

fn log_path(name: &str) -> PathBuf {
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("sipp-{}-{n}-{name}", std::process::id()))
}

fn base(name: &str, ip: IpAddr, port: u16) -> (Command, PathBuf) {
    base_calls(
        name,
        ip,
        port,
        !matches!(
            name,
            "answer" | "busy" | "ring" | "answer_refer" | "answer_hangup" | "answer_many" | "busy_many" | "ring_many"
        ),
    )
}

/// `one_call`: `-m 1` (a UAC that makes one call, then exits).
fn base_calls(name: &str, ip: IpAddr, port: u16, one_call: bool) -> (Command, PathBuf) {
    let log = log_path(name);
    let mut c = Command::new(binary().unwrap_or_else(|| PathBuf::from("sipp")));
    c.arg("-sf")
        .arg(scenario(name))
        .args(["-i", &ip.to_string(), "-p", &port.to_string(), "-nostdin", "-aa", "-trace_err", "-trace_msg"])
        .arg("-error_file")
        .arg(log.with_extension("err"))
        .arg("-message_file")
        .arg(log.with_extension("msg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // One call, then exit. The answering scenario stops itself after its one
    // call instead: sipp counts each qualify OPTIONS it answers (-aa) as a
    // call, so `-m 1` let one arriving before the INVITE end it.
    if one_call {
        c.args(["-m", "1"]);
    }
    (c, log)
}

fn read_logs(log: &std::path::Path) -> String {
    let mut s = String::new();
    for ext in ["err", "msg"] {
        if let Ok(t) = std::fs::read_to_string(log.with_extension(ext)) {
            s.push_str(&t);
        }
        let _ = std::fs::remove_file(log.with_extension(ext));
    }
    s
}

async fn finish(c: Command, log: PathBuf, within: Duration) -> Outcome {
    let code = match crate::spawn_for_process(c) {
        Ok(mut child) => match tokio::time::timeout(within, child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = child.kill().await;
                None
            }
        },
        Err(e) => panic!("cannot start sipp: {e}"),
    };
    Outcome { code, log: read_logs(&log) }
}
