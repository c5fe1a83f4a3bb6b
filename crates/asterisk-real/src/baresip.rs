//! baresip (Debian's `baresip-core`) as a real softphone beside sipp, with
//! no sound card: the microphone is the `aufile` module reading a tone this
//! harness writes (16-bit mono 8 kHz WAV, [`TONE_SECONDS`] long: baresip 1.0
//! ends a call when its source file ends), and no audio player module is
//! loaded (baresip 1.0's `aufile` has no player): received audio is decoded
//! and written to a WAV by the `sndfile` module, where a test can find the
//! other phone's tone ([`tone_in`]).
//!
//! Each phone gets its own directory with a generated `config` (modules:
//! `stdio`, `g711`, `aufile`, `sndfile` — which dumps what the phone
//! received to `audio/*-dec.wav`, [`Baresip::received_audio`] —, `account`,
//! `menu`) and `accounts` file (one
//! account, SIP over UDP to the test's Asterisk, `answermode=auto`). It is
//! driven through its stdin (the `stdio` module reads `menu` commands such
//! as `/dial 1002` and `/hangup` from a pipe) and observed through its
//! output (SIP trace on), which goes to `baresip.log`: tests wait for the
//! events the phone prints ([`REGISTERED`], [`ESTABLISHED`], [`CLOSED`], …), found
//! after a mark taken before the test caused them, never for a time.
//!
//! [`Baresip::kill`] is a crash (SIGKILL, no unregister);
//! [`Baresip::restart`] comes back on another local port, as a softphone
//! restarted after a crash does; [`Baresip::pause`] (SIGSTOP) makes it
//! silent while its process lives. Dropped, it is killed; when the test
//! panics its output is kept under `target/asterisk-logs/<name>/`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};

/// How long the tone the phone sends lasts (its calls can last no longer).
pub const TONE_SECONDS: u32 = 60;

/// Printed when a registration got 200 (`1001@127.0.0.1: {0/UDP/v4} 200 OK …`).
pub const REGISTERED: &str = "} 200 OK";
/// Printed when a registration was refused (`reg: sip:1001@…: 403 Forbidden`).
pub const REGISTER_FAILED: &str = "reg: sip:";
/// Printed when an incoming call is answered automatically.
pub const ANSWERING: &str = "call: answering call";
/// Printed when a call (either way) is up: `Call established: sip:1002@…`.
pub const ESTABLISHED: &str = "Call established: ";
/// Printed when a call was ended by the other side or failed:
/// `sip:1002@…: session closed: Connection reset by peer` (a BYE), `…: 404
/// Not Found`. (baresip prints `Call with … terminated` only when it frees
/// the call, which can come much later.)
pub const CLOSED: &str = ": session closed: ";
/// Printed when the first RTP of a call arrives (`stream: incoming rtp for 'audio' established, receiving from …`).
pub const RTP_ARRIVED: &str = "incoming rtp for 'audio' established";
/// Printed when this phone hangs up (`/hangup`): `call: terminate call '…' with sip:…`.
pub const HUNG_UP: &str = "call: terminate call";

/// The baresip binary, if installed.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("baresip")).find(|p| p.is_file())
}

/// The directory with baresip's modules (where `g711.so` is).
fn module_path() -> Option<PathBuf> {
    ["/usr/lib/baresip/modules", "/usr/lib/x86_64-linux-gnu/baresip/modules", "/usr/local/lib/baresip/modules"]
        .iter()
        .map(PathBuf::from)
        .find(|d| ["g711.so", "aufile.so", "sndfile.so"].iter().all(|m| d.join(m).is_file()))
}

/// True when baresip can run; otherwise a loud SKIPPED (false), or a panic
/// under `CI=true`.
pub fn require(test: &str) -> bool {
    let missing = match (binary(), module_path()) {
        (Some(_), Some(_)) => return true,
        (None, _) => "baresip is not installed (Debian's baresip-core)",
        (Some(_), None) => "baresip's modules (g711.so, aufile.so, sndfile.so) are not where Debian puts them",
    };
    if crate::in_ci() {
        panic!("{test}: baresip is required under CI=true: {missing}");
    }
    eprintln!("\n*** SKIPPED {test}: {missing} ***\n");
    false
}

/// The account a phone registers: SIP over UDP to `server`.
#[derive(Clone)]
pub struct Account {
    pub extension: String,
    pub password: String,
    pub server: SocketAddr,
}

impl Account {
    pub fn new(extension: &str, password: &str, server: SocketAddr) -> Account {
        Account { extension: extension.into(), password: password.into(), server }
    }
}

static PHONES: AtomicUsize = AtomicUsize::new(0);

/// A running baresip.
pub struct Baresip {
    /// Names the phone in kept logs.
    pub name: String,
    account: Account,
    netns: Option<String>,
    /// The local address it binds (127.0.0.1, or its namespace's address).
    pub ip: IpAddr,
    /// The local SIP port of the current run.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    run_from: usize,
    starts: u32,
}

impl Baresip {
    /// Starts a phone on 127.0.0.1 and a free port (it registers at once:
    /// wait with [`wait_registered`](Self::wait_registered)).
    pub fn start(name: &str, account: Account) -> std::io::Result<Baresip> {
        Baresip::spawn(name, account, None, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts a phone in the root namespace bound to `ip` (an address a
    /// test's namespaces gave the root namespace).
    pub fn start_on(name: &str, account: Account, ip: IpAddr) -> std::io::Result<Baresip> {
        Baresip::spawn(name, account, None, ip)
    }

    /// Starts a phone inside network namespace `netns`, bound to `ip` there.
    pub fn start_in(name: &str, account: Account, netns: &str, ip: IpAddr) -> std::io::Result<Baresip> {
        Baresip::spawn(name, account, Some(netns.to_string()), ip)
    }

    fn spawn(name: &str, account: Account, netns: Option<String>, ip: IpAddr) -> std::io::Result<Baresip> {
        let n = PHONES.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new().prefix(&format!("baresip-{n}-")).tempdir()?;
        std::fs::write(dir.path().join("tone.wav"), tone_wav(440, TONE_SECONDS))?;
        // Written empty so baresip does not write its templates.
        std::fs::write(dir.path().join("contacts"), "")?;
        std::fs::create_dir_all(dir.path().join("audio"))?;
        let mut p = Baresip {
            name: format!("{name}-{}-{n}", std::process::id()),
            account,
            netns,
            ip,
            port: free_port_pair(),
            dir,
            child: None,
            stdin: None,
            run_from: 0,
            starts: 0,
        };
        p.launch()?;
        Ok(p)
    }

    fn write_config(&self) -> std::io::Result<()> {
        let d = self.dir.path();
        let modules = module_path().ok_or_else(|| std::io::Error::other("baresip's modules are not installed"))?;
        // RTP ports above Linux's ephemeral range and free_port's, a window
        // of their own per phone.
        let rtp = 61_000 + (self.port % 200) * 20;
        std::fs::write(
            d.join("config"),
            format!(
                "poll_method\tepoll\n\
                 sip_listen\t{listen}\n\
                 net_interface\t{ip}\n\
                 call_local_timeout\t120\n\
                 call_max_calls\t4\n\
                 audio_source\taufile,{tone}\n\
                 rtp_ports\t{rtp}-{rtp_end}\n\
                 module_path\t{modules}\n\
                 module\tstdio.so\n\
                 module\tg711.so\n\
                 module\taufile.so\n\
                 module\tsndfile.so\n\
                 snd_path\t{received}\n\
                 module_tmp\taccount.so\n\
                 module_app\tmenu.so\n",
                listen = SocketAddr::new(self.ip, self.port),
                ip = self.ip,
                tone = d.join("tone.wav").display(),
                rtp_end = rtp + 19,
                modules = modules.display(),
                received = d.join("audio").display(),
            ),
        )?;
        let a = &self.account;
        std::fs::write(
            d.join("accounts"),
            format!("<sip:{}@{}>;auth_pass={};answermode=auto;regint=600\n", a.extension, a.server, a.password),
        )
    }

    fn launch(&mut self) -> std::io::Result<()> {
        self.write_config()?;
        let log_path = self.dir.path().join("baresip.log");
        self.run_from = std::fs::metadata(&log_path).map(|m| m.len() as usize).unwrap_or(0);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let program = binary().unwrap_or_else(|| PathBuf::from("baresip"));
        let mut c = match &self.netns {
            Some(ns) => crate::netns::exec(ns, program),
            None => Command::new(program),
        };
        c.arg("-f")
            .arg(self.dir.path())
            .arg("-s")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = crate::spawn_for_process(c)?;
        self.stdin = child.stdin.take();
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Everything it printed (all runs), escape sequences removed.
    pub fn log(&self) -> String {
        clean(&std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default())
    }

    /// A mark in the output: events printed after it are newer than now.
    pub fn mark(&self) -> usize {
        std::fs::metadata(self.dir.path().join("baresip.log")).map(|m| m.len() as usize).unwrap_or(0)
    }

    /// The mark where the current run's output begins.
    pub fn run_start(&self) -> usize {
        self.run_from
    }

    /// The output after `mark`, escape sequences removed.
    pub fn log_since(&self, mark: usize) -> String {
        let raw = std::fs::read(self.dir.path().join("baresip.log")).unwrap_or_default();
        clean(&String::from_utf8_lossy(raw.get(mark..).unwrap_or_default()))
    }

    /// The last `n` lines of its output.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The first line after `mark` that `pred` picks, waiting up to
    /// `within`; Err (with the output's tail) when none came or the phone
    /// exited.
    pub async fn wait_line(
        &mut self,
        mark: usize,
        within: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            let text = self.log_since(mark);
            if let Some(line) = text.split(['\n', '\r']).find(|l| pred(l)) {
                return Ok(line.to_string());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "{}: exited ({status}) before {what}; it printed:\n{}",
                    self.name,
                    self.log_tail(40)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{}: no {what} within {within:?}; it printed:\n{}", self.name, self.log_tail(40)));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for a line containing `needle` after `mark`; panics after `within`.
    pub async fn wait_for(&mut self, mark: usize, needle: &str, within: Duration) -> String {
        match self.wait_line(mark, within, &format!("{needle:?}"), |l| l.contains(needle)).await {
            Ok(line) => line,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits for the current run's registration to be answered: Ok with the
    /// 200 line, Err with the refusal (`reg: … 403 Forbidden`) or why none came.
    pub async fn wait_registered(&mut self, within: Duration) -> Result<String, String> {
        let ok = format!("{}@", self.account.extension);
        let from = self.run_from;
        let line = self
            .wait_line(from, within, "answer to its REGISTER", |l| {
                (l.starts_with(&ok) && l.contains(REGISTERED)) || l.starts_with(REGISTER_FAILED)
            })
            .await?;
        if line.starts_with(REGISTER_FAILED) { Err(line) } else { Ok(line) }
    }

    /// Sends a `menu` command (`/dial 1002`, `/hangup`, …) to its stdin.
    pub async fn command(&mut self, cmd: &str) {
        let Some(stdin) = self.stdin.as_mut() else { panic!("{}: not running", self.name) };
        let line = format!("{cmd}\n");
        if let Err(e) = stdin.write_all(line.as_bytes()).await {
            panic!("{}: cannot write {cmd:?} to its stdin: {e}", self.name);
        }
        let _ = stdin.flush().await;
    }

    /// Dials `number` at its server (the dialplan decides where it goes).
    pub async fn dial(&mut self, number: &str) {
        self.command(&format!("/dial {number}")).await;
    }

    /// Hangs up the current call.
    pub async fn hang_up(&mut self) {
        self.command("/hangup").await;
    }

    /// The process id of the current run.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// A crash: SIGKILL, no unregister; waits until it is gone.
    pub async fn kill(&mut self) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again after [`kill`](Self::kill), on another local port
    /// (as a softphone restarted after a crash does).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            self.kill().await;
        }
        let old = self.port;
        while self.port == old {
            self.port = free_port_pair();
        }
        self.launch()
    }

    /// Makes it silent (SIGSTOP): the process lives, answers nothing.
    pub async fn pause(&self) {
        self.signal("STOP").await;
    }

    /// Lets a paused phone run on (SIGCONT).
    pub async fn resume(&self) {
        self.signal("CONT").await;
    }

    async fn signal(&self, sig: &str) {
        let Some(pid) = self.pid() else { panic!("{}: not running", self.name) };
        // The shell's builtin `kill`: no procps needed.
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$0\" \"$1\"", sig, &pid.to_string()])
            .stdin(Stdio::null())
            .status()
            .await;
        assert!(status.as_ref().is_ok_and(|s| s.success()), "{}: kill -s {sig} {pid}: {status:?}", self.name);
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Its directory (config, accounts, tone.wav, baresip.log, audio/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The audio it received and decoded in each call so far, oldest
    /// first: the `sndfile` module's `*-dec.wav` dumps (16-bit mono 8 kHz),
    /// as samples. A call's file grows while the call is up.
    pub fn received_audio(&self) -> Vec<Vec<i16>> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("audio")) else { return Vec::new() };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        files.sort();
        files.iter().map(|f| wav_samples(&std::fs::read(f).unwrap_or_default())).collect()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            let keep = crate::target_dir().join("asterisk-logs").join(&self.name);
            if std::fs::create_dir_all(&keep).is_ok() {
                for f in ["baresip.log", "config"] {
                    let _ = std::fs::copy(self.dir.path().join(f), keep.join(f));
                }
            }
            eprintln!("\nbaresip {} output kept in {}; it ends:\n{}\n", self.name, keep.display(), self.log_tail(25));
        }
    }
}

/// A port `p` with `p + 1` free too, both taken from [`crate::free_port`]'s
/// sequence (so no other test of this process gets either): baresip listens
/// on UDP and TCP `p` and, for TLS, on TCP `p + 1`.
fn free_port_pair() -> u16 {
    loop {
        let p = crate::free_port();
        if crate::free_port() == p + 1 {
            return p;
        }
    }
}

/// Removes terminal escape sequences (`ESC [ … letter`) baresip colours with.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The 16-bit samples after a WAV's `data` chunk header (whatever length
/// the header says: a dump still being written says 0).
pub fn wav_samples(wav: &[u8]) -> Vec<i16> {
    let Some(at) = wav.windows(4).position(|w| w == b"data") else { return Vec::new() };
    wav.get(at + 8..).unwrap_or_default().chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]])).collect()
}

/// The frequency of the tone in `samples` (8 kHz), from its zero
/// crossings over the loud stretch (|sample| > 2000 around it), and how
/// many samples that stretch has: (Hz, samples). `None` when it is silence.
pub fn tone_in(samples: &[i16]) -> Option<(f64, usize)> {
    let first = samples.iter().position(|s| s.unsigned_abs() > 2000)?;
    let last = samples.iter().rposition(|s| s.unsigned_abs() > 2000)?;
    let loud = &samples[first..=last];
    if loud.len() < 160 {
        return None;
    }
    let crossings = loud.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    Some((crossings as f64 / 2.0 / (loud.len() as f64 / 8000.0), loud.len()))
}

/// A 16-bit mono 8 kHz WAV of a sine tone.
pub fn tone_wav(hz: u32, seconds: u32) -> Vec<u8> {
    const RATE: u32 = 8000;
    let samples = RATE * seconds;
    let data_len = samples * 2;
    let mut w = Vec::with_capacity(44 + data_len as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&RATE.to_le_bytes());
    w.extend_from_slice(&(RATE * 2).to_le_bytes()); // bytes per second
    w.extend_from_slice(&2u16.to_le_bytes()); // block align
    w.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..samples {
        let t = i as f64 / RATE as f64;
        let v = (8000.0 * (2.0 * std::f64::consts::PI * hz as f64 * t).sin()) as i16;
        w.extend_from_slice(&v.to_le_bytes());
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tone_is_a_16_bit_mono_8_khz_wav_of_the_length_asked() {
        let w = tone_wav(440, 2);
        assert_eq!(&w[0..4], b"RIFF");
        assert_eq!(&w[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([w[22], w[23]]), 1, "mono");
        assert_eq!(u32::from_le_bytes([w[24], w[25], w[26], w[27]]), 8000, "8 kHz");
        assert_eq!(u16::from_le_bytes([w[34], w[35]]), 16, "16-bit");
        assert_eq!(w.len(), 44 + 8000 * 2 * 2);
        assert!(w[44..].chunks(2).any(|s| i16::from_le_bytes([s[0], s[1]]).abs() > 7000), "a tone, not silence");
    }

    #[test]
    fn the_tone_is_found_again_in_its_samples() {
        let samples = wav_samples(&tone_wav(440, 1));
        assert_eq!(samples.len(), 8000);
        let (hz, n) = tone_in(&samples).expect("a tone");
        assert!((hz - 440.0).abs() < 5.0, "{hz}");
        assert!(n > 7900, "{n}");
        assert_eq!(tone_in(&[0i16; 8000]), None, "silence");
    }

    #[test]
    fn escape_sequences_are_removed() {
        assert_eq!(clean("\u{1b}[32mAll 1 useragent registered\u{1b}[;m\n"), "All 1 useragent registered\n");
    }
}
