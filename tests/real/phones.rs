//! A real softphone (baresip, no sound card) on the real Asterisk, through
//! `serve` and the API, with extensions created from the seed's exact POST
//! body: the phone that crashed registers again at once, the phone that
//! goes silent turns unreachable, calls between baresip and sipp are
//! answered, and a phone behind NAT (network namespaces the test makes)
//! rings and answers with the NAT defaults — and does not ring without them.

use super::{Daemon, SEED_BODY, Source, Store, asterisk, contacts, endpoint, wait};
use asterisk_real::baresip::{self, Account, Baresip, CLOSED, ESTABLISHED, HUNG_UP, RTP_ARRIVED, tone_in};
use asterisk_real::netns::{self, NatNet};
use asterisk_real::{Asterisk, Options, require, sipp};
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const LIVE: Duration = Duration::from_secs(30);

/// The real Asterisk, sipp and baresip, or `None` after a loud SKIPPED.
fn require_phones(test: &str) -> Option<asterisk_real::Build> {
    let build = require(test)?;
    baresip::require(test).then_some(build)
}

/// The seed's body for another extension number (and display name).
fn seed_body_for(ext: &str, name: &str) -> String {
    SEED_BODY.replace("1001", ext).replace("Test User", name)
}

/// The seed's body with fields added.
fn seed_body_with(ext: &str, extra: &[(&str, Value)]) -> String {
    let mut body: serde_json::Map<String, Value> =
        serde_json::from_str(&seed_body_for(ext, "Test User")).expect("the seed's body is JSON");
    for (k, v) in extra {
        body.insert((*k).to_string(), v.clone());
    }
    Value::Object(body).to_string()
}

/// The spec for a phone on the same LAN as Asterisk: the seed's body with
/// `profile: lan` — Asterisk's own NAT handling (no contact rewriting, RTP
/// to where the SDP says, direct media allowed).
fn lan_body(ext: &str) -> String {
    seed_body_with(ext, &[("profile", Value::String("lan".into()))])
}

/// Whether a contact URI (`sip:1001-0x…@127.0.0.1:5071;…`) is at `ip:port`.
fn at(uri: &str, ip: IpAddr, port: Option<u16>) -> bool {
    let Some((_, host)) = uri.rsplit_once('@') else { return false };
    let host = host.split([';', '>']).next().unwrap_or_default();
    match port {
        Some(p) => host == format!("{ip}:{p}"),
        None => host.split_once(':').is_some_and(|(h, _)| h == ip.to_string()),
    }
}

async fn live_status(d: &Daemon, ext: &str) -> Value {
    let (status, body) = d.get(&format!("/extensions/{ext}/status")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The aor's qualify_frequency as Asterisk holds it (`pjsip show aor`).
async fn qualify_frequency(ast: &Asterisk, aor: &str) -> Option<String> {
    let out = ast.cli(&format!("pjsip show aor {aor}")).await;
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "qualify_frequency")
        .map(|(_, v)| v.trim().to_string())
}

async fn create(d: &Daemon, ast: &Asterisk, body: &str, ext: &str) {
    let (status, resp) = d.call("POST", "/extensions", Some(body)).await;
    assert_eq!(status, 201, "{resp}");
    wait(&format!("{ext} live in Asterisk"), LIVE, || async { endpoint(ast, ext).await.is_some() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_softphone_that_crashed_registers_again_at_once_and_only_its_new_contact_is_shown() {
    let Some(build) = require_phones("real::phones::a_softphone_that_crashed") else { return };
    let ast = asterisk(&build, "bs-crash").await;
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, "").await;
    create(&d, &ast, SEED_BODY, "1001").await;

    let mut phone = Baresip::start("crash-1001", Account::new("1001", "Soundz2025", ast.sip_addr())).expect("baresip");
    phone.wait_registered(LIVE).await.expect("the first registration");
    let first = phone.port;
    let live = live_status(&d, "1001").await;
    assert!(live["contacts"].as_array().is_some_and(|c| c.len() == 1), "{live}");
    let uri = live["contacts"][0]["uri"].as_str().unwrap_or_default();
    assert!(at(uri, phone.ip, Some(first)), "the contact is the phone's address: {live}");
    assert!(live["contacts"][0]["userAgent"].as_str().is_some_and(|u| u.starts_with("baresip")), "{live}");

    // The crash: no unregister; the dead contact stays in Asterisk. The
    // phone comes back on another local port and registers at once (not
    // 403 until the dead contact expires: remove_existing).
    phone.kill().await;
    phone.restart().await.expect("baresip again");
    assert_ne!(phone.port, first);
    let again = phone.wait_registered(LIVE).await;
    assert!(again.is_ok(), "the phone that came back was refused: {again:?}\nAsterisk:\n{}", ast.log_tail(15));

    let live = live_status(&d, "1001").await;
    let shown: Vec<&str> =
        live["contacts"].as_array().into_iter().flatten().filter_map(|c| c["uri"].as_str()).collect();
    assert!(shown.len() == 1 && at(shown[0], phone.ip, Some(phone.port)), "only the new contact: {live}");
    assert_eq!(live["registered"], true, "{live}");
    let held = contacts(&ast, "1001").await;
    assert!(held.len() == 1 && at(&held[0], phone.ip, Some(phone.port)), "Asterisk's own view: {held:?}");
    d.stop().await;
}

/// Registers a baresip for `ext` and pauses it once it is reachable; waits
/// (up to `within`) for the status to say unreachable and returns the time
/// it took; with `back`, lets it run on and waits for it to be reachable
/// again (the next qualify: one period).
async fn goes_silent(d: &Daemon, ast: &Asterisk, ext: &str, within: Duration, back: bool) -> Duration {
    let mut phone =
        Baresip::start(&format!("silent-{ext}"), Account::new(ext, "Soundz2025", ast.sip_addr())).expect("baresip");
    phone.wait_registered(LIVE).await.expect("registers");
    // Alive: baresip answers Asterisk's qualify OPTIONS.
    wait("the contact reachable, with a round trip time", LIVE, || async {
        let c = live_status(d, ext).await["contacts"][0].clone();
        c["status"] == "Reachable" && c["roundtripUsec"].is_u64()
    })
    .await;
    assert_eq!(live_status(d, ext).await["registered"], true);

    // Silent: the process lives but answers nothing (a laptop asleep, a
    // phone whose network went away).
    phone.pause().await;
    let silent = Instant::now();
    wait("the contact unreachable", within, || async {
        live_status(d, ext).await["contacts"][0]["status"] == "Unreachable"
    })
    .await;
    let took = silent.elapsed();
    let live = live_status(d, ext).await;
    assert_eq!(
        (live["registered"].as_bool(), live["contacts"].as_array().map(Vec::len)),
        (Some(false), Some(1)),
        "registered means a live contact: {live}"
    );
    wait("the list to say unregistered", LIVE, || async {
        d.get(&format!("/extensions/{ext}")).await.1["registration"]["registered"] == false
    })
    .await;

    if back {
        // Back: it answers the next qualify and is reachable again.
        phone.resume().await;
        wait("the contact reachable again", LIVE, || async {
            live_status(d, ext).await["contacts"][0]["status"] == "Reachable"
        })
        .await;
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_softphone_that_goes_silent_turns_unreachable_with_a_short_qualify_period() {
    let Some(build) = require_phones("real::phones::silent_short_qualify") else { return };
    let ast = asterisk(&build, "bs-silent").await;
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, "").await;
    // The seed's body with qualifyFrequency 2 (seconds) set through the API.
    create(&d, &ast, &seed_body_with("1001", &[("qualifyFrequency", Value::from(2))]), "1001").await;
    assert_eq!(qualify_frequency(&ast, "1001").await.as_deref(), Some("2"));
    let took = goes_silent(&d, &ast, "1001", LIVE, true).await;
    // Reported, not asserted: the next qualify (≤ 2 s) plus Asterisk's 3 s
    // qualify timeout is expected.
    eprintln!("silent softphone → Unreachable in {took:?} (qualifyFrequency 2 s)");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_softphone_that_goes_silent_turns_unreachable_within_two_qualify_periods_of_the_seeds_body() {
    // The seed's exact body: qualifyFrequency defaults to 60 s, so this
    // test takes about a minute (the next qualify, then its 3 s timeout).
    let Some(build) = require_phones("real::phones::silent_seed_body") else { return };
    let ast = asterisk(&build, "bs-silent-seed").await;
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, "").await;
    create(&d, &ast, SEED_BODY, "1001").await;
    let period = Duration::from_secs(asterisk_gitops::core::spec::resolve::DEFAULT_QUALIFY_FREQUENCY.into());
    assert_eq!(qualify_frequency(&ast, "1001").await, Some(period.as_secs().to_string()));
    // The acceptance's bound: unreachable within two qualify periods. (Its
    // coming back takes another period: the short-qualify test shows that.)
    let took = goes_silent(&d, &ast, "1001", 2 * period, false).await;
    eprintln!("silent softphone → Unreachable in {took:?} (the seed's body: qualifyFrequency 60 s)");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_a_softphone_and_sipp_are_answered_both_ways() {
    let Some(build) = require_phones("real::phones::calls_between_baresip_and_sipp") else { return };
    let ast = asterisk(&build, "bs-call").await;
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, "").await;
    create(&d, &ast, SEED_BODY, "1001").await;
    create(&d, &ast, &seed_body_for("1002", "Callee"), "1002").await;
    let mut soft = Baresip::start("call-1001", Account::new("1001", "Soundz2025", ast.sip_addr())).expect("baresip");
    soft.wait_registered(LIVE).await.expect("baresip registers");
    let sipp_phone = sipp::Phone::new("1002", "Soundz2025");
    assert!(sipp_phone.register(ast.sip_addr()).await.ok(), "sipp registers");

    // sipp (1002) → baresip (1001): the softphone rings, answers by itself;
    // sipp holds the call, then hangs up.
    let mark = soft.mark();
    let placed = sipp_phone.call(ast.sip_addr(), "1001", Duration::from_millis(1500)).await;
    assert!(
        placed.ok(),
        "1002 → 1001:\n{}\nAsterisk:\n{}\nbaresip:\n{}",
        placed.log,
        ast.log_tail(20),
        soft.log_tail(30)
    );
    let up = soft.wait_for(mark, ESTABLISHED, LIVE).await;
    assert!(up.contains("sip:1002@"), "the call from 1002 was established: {up}");
    soft.wait_for(mark, CLOSED, LIVE).await;

    // baresip (1001) → sipp (1002): sipp answers on the port it registered
    // from; baresip hangs up.
    let answering = sipp_phone.answer();
    let mark = soft.mark();
    soft.dial("1002").await;
    let up = soft.wait_for(mark, ESTABLISHED, LIVE).await;
    assert!(up.contains("1002"), "the call to 1002 was established: {up}");
    soft.hang_up().await;
    soft.wait_for(mark, HUNG_UP, LIVE).await;
    let answered = answering.done(LIVE).await;
    assert!(answered.ok(), "sipp saw a complete call (answered, then BYE):\n{}", answered.log);
    assert!(answered.log.contains("INVITE sip:1002@"), "Asterisk rang 1002's contact:\n{}", answered.log);
    d.stop().await;
}

/// Asterisk in the pbx namespace, the daemon (in the test's root
/// namespace) managing it, 1001 (made from `phone_body`) and 1002 (the
/// seed's body), and baresip registered as 1001 in the phone namespace
/// behind the NAT. Fields drop in order: the phone, Asterisk, then the
/// network (stop the daemon first).
struct BehindNat {
    phone: Baresip,
    d: Daemon,
    ast: Asterisk,
    net: NatNet,
}

async fn behind_nat(test: &str, phone_body: &str) -> Option<BehindNat> {
    let build = require_phones(test)?;
    if !netns::require(test) {
        return None;
    }
    let net = NatNet::create().unwrap_or_else(|e| panic!("the network namespaces: {e}"));
    let ast = Asterisk::start(&build, Options { netns: Some(net.pbx_place()), ..Options::named("nat") })
        .await
        .unwrap_or_else(|e| panic!("Asterisk starts in {}: {e}", net.pbx));
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, "").await;
    create(&d, &ast, phone_body, "1001").await;
    create(&d, &ast, &seed_body_for("1002", "Caller"), "1002").await;
    let account = Account::new("1001", "Soundz2025", ast.sip_addr());
    let mut phone = Baresip::start_in("nat-1001", account, &net.phone, IpAddr::V4(net.phone_ip))
        .expect("baresip in the phone namespace");
    phone.wait_registered(LIVE).await.expect("the phone behind NAT registers");
    Some(BehindNat { phone, d, ast, net })
}

impl BehindNat {
    /// sipp as 1002, on the root namespace's link to the pbx, calls 1001 and
    /// holds the answered call for a while: its outcome, and what the phone
    /// printed meanwhile.
    async fn sipp_calls_the_phone(&mut self) -> (sipp::Outcome, String) {
        let caller = sipp::Phone { ip: IpAddr::V4(self.net.root_ip), ..sipp::Phone::new("1002", "Soundz2025") };
        let mark = self.phone.mark();
        let placed = caller.call(self.ast.sip_addr(), "1001", Duration::from_millis(1500)).await;
        if placed.ok() {
            self.phone.wait_for(mark, CLOSED, LIVE).await;
        }
        (placed, self.phone.log_since(mark))
    }

    /// A second baresip (1002, on the root namespace's link) calls 1001;
    /// once the phone answered and the caller has heard half a second of
    /// the phone's tone (and, with `phone_hears`, the phone of the
    /// caller's), the caller hangs up. Returns the tone each heard: (the
    /// phone behind NAT, the caller).
    async fn baresip_calls_the_phone(&mut self, phone_hears: bool) -> (Option<(f64, usize)>, Option<(f64, usize)>) {
        let account = Account::new("1002", "Soundz2025", self.ast.sip_addr());
        let mut caller = Baresip::start_on("nat-1002", account, IpAddr::V4(self.net.root_ip)).expect("baresip 1002");
        caller.wait_registered(LIVE).await.expect("1002 registers");
        let (from_caller, from_phone) = (caller.mark(), self.phone.mark());
        caller.dial("1001").await;
        caller.wait_for(from_caller, ESTABLISHED, LIVE).await;
        self.phone.wait_for(from_phone, ESTABLISHED, LIVE).await;
        caller.wait_for(from_caller, RTP_ARRIVED, LIVE).await;
        // Half a second of the phone's tone at the caller: the call's media
        // has flowed for that long (and the other way too, if it can).
        let heard = |p: &Baresip| p.received_audio().last().and_then(|a| tone_in(a)).is_some_and(|(_, n)| n >= 4000);
        wait("half a second of the phone's tone at the caller", LIVE, || async { heard(&caller) }).await;
        if phone_hears {
            self.phone.wait_for(from_phone, RTP_ARRIVED, LIVE).await;
            wait("half a second of the caller's tone at the phone", LIVE, || async { heard(&self.phone) }).await;
        }
        caller.hang_up().await;
        caller.wait_for(from_caller, HUNG_UP, LIVE).await;
        self.phone.wait_for(from_phone, CLOSED, LIVE).await;
        let tone = |p: &Baresip| p.received_audio().last().and_then(|a| tone_in(a));
        (tone(&self.phone), tone(&caller))
    }

    async fn contact(&self) -> Value {
        live_status(&self.d, "1001").await["contacts"][0].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_softphone_behind_nat_rings_and_answers_with_the_seeds_nat_defaults() {
    let Some(mut rig) = behind_nat("real::phones::behind_nat_seed_body", SEED_BODY).await else { return };
    // Asterisk holds the address the packets came from (rewrite_contact),
    // the NAT's public side, not the private one the phone wrote.
    let nat = IpAddr::V4(NatNet::NAT_PUBLIC);
    let contact = rig.contact().await;
    assert!(at(contact["uri"].as_str().unwrap_or_default(), nat, None), "the NAT's public address: {contact}");
    let held = contacts(&rig.ast, "1001").await;
    assert!(held.len() == 1 && at(&held[0], nat, None), "{held:?}");

    // A call from sipp rings the phone and is answered.
    let (placed, phone_log) = rig.sipp_calls_the_phone().await;
    assert!(
        placed.ok(),
        "the call to the phone behind NAT was not answered:\n{}\nAsterisk:\n{}\nphone:\n{phone_log}",
        placed.log,
        rig.ast.log_tail(30)
    );
    let up = phone_log.split(['\n', '\r']).find(|l| l.contains(ESTABLISHED)).unwrap_or_default();
    assert!(up.contains("sip:1002@"), "the phone answered the call from 1002:\n{phone_log}");

    // A call from a second baresip (1002, root side): the tone each phone
    // sends arrives at the other, through the NAT both ways (rtp_symmetric:
    // Asterisk sends the phone's audio to where its RTP comes from, not to
    // the private address its SDP names).
    let (phone_heard, caller_heard) = rig.baresip_calls_the_phone(true).await;
    for (who, tone) in [("the phone behind NAT", phone_heard), ("the caller", caller_heard)] {
        assert!(tone.is_some_and(|(hz, _)| (hz - 440.0).abs() < 20.0), "{who} heard no 440 Hz tone: {tone:?}");
    }
    rig.d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_softphone_behind_nat_hears_nothing_without_rtp_symmetric() {
    // The seed's body but rtpSymmetric false: the call is answered (the
    // contact is rewritten), the caller hears the phone, but Asterisk sends
    // the phone's audio to the private address its SDP names: it never
    // arrives.
    let body = seed_body_with("1001", &[("rtpSymmetric", Value::Bool(false))]);
    let Some(mut rig) = behind_nat("real::phones::behind_nat_no_rtp_symmetric", &body).await else { return };
    let (phone_heard, caller_heard) = rig.baresip_calls_the_phone(false).await;
    assert!(caller_heard.is_some_and(|(hz, _)| (hz - 440.0).abs() < 20.0), "the caller heard: {caller_heard:?}");
    assert_eq!(phone_heard, None, "the phone behind NAT heard a tone without rtp_symmetric");
    rig.d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_softphone_behind_nat_does_not_ring_with_the_lan_settings() {
    // The proof that the NAT settings matter: the same network, phone and
    // call with the lan body (lan_body) — Asterisk keeps the phone's private
    // Contact and sends the INVITE there, where the pbx has no route.
    let Some(mut rig) = behind_nat("real::phones::behind_nat_lan", &lan_body("1001")).await else { return };
    let private = IpAddr::V4(NatNet::PHONE);
    let contact = rig.contact().await;
    assert!(at(contact["uri"].as_str().unwrap_or_default(), private, None), "the private address: {contact}");
    let held = contacts(&rig.ast, "1001").await;
    assert!(held.len() == 1 && at(&held[0], private, None), "{held:?}");

    let (placed, phone_log) = rig.sipp_calls_the_phone().await;
    assert!(!placed.ok(), "the call was answered without the NAT settings:\n{}", placed.log);
    assert!(!phone_log.contains("INVITE sip:"), "the phone saw an INVITE:\n{phone_log}");
    assert!(!phone_log.contains(ESTABLISHED), "{phone_log}");
    // What the caller saw: Asterisk could not send the INVITE to the
    // private address (no route from the pbx) and answered at once with 404
    // and Q.850 cause 3, "no route to destination" — not a ring, not a hang.
    assert!(
        placed.log.contains("SIP/2.0 404 Not Found") && placed.log.contains("Reason: Q.850;cause=3"),
        "the caller got no 404 with cause 3 (no route):\n{}\nAsterisk:\n{}",
        placed.log,
        rig.ast.log_tail(30)
    );
    rig.d.stop().await;
}
