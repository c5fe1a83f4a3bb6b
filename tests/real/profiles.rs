//! Profiles on a real Asterisk: an extension of each profile (nat, lan,
//! webrtc on a WebSocket transport) applied through the daemon loads and
//! verifies, Asterisk reports what each profile sets, and switching an
//! existing extension from nat to lan is applied and verified.

use super::{Daemon, Source, Store, endpoint, wait};
use asterisk_real::{Asterisk, Options, require};
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);
const MD5: &str = "0123456789abcdef0123456789abcdef";

/// The operator's WebSocket transport: Asterisk serves it on its HTTP
/// server (`/ws`, res_http_websocket + res_pjsip_transport_websocket),
/// bound to 127.0.0.1 by the example http.conf.
const WS_TRANSPORT: &str = "[transport-ws]\ntype = transport\nprotocol = ws\nbind = 127.0.0.1\n";

fn specs(first_profile: &str) -> String {
    format!(
        "defaults: {{context: from-internal, transport: transport-udp, codecs: [ulaw]}}\nextensions:\n\
         \x20 - extension: \"4101\"\n    md5Cred: {MD5}\n{first_profile}\
         \x20 - extension: \"4102\"\n    profile: lan\n    md5Cred: {MD5}\n\
         \x20 - extension: \"4103\"\n    profile: webrtc\n    transport: transport-ws\n    codecs: [opus, ulaw]\n    md5Cred: {MD5}\n"
    )
}

/// The value of `option` in `pjsip show endpoint`'s output (Asterisk's own
/// CLI: an observer independent of the daemon's AMI client).
fn shown(cli: &str, option: &str) -> Option<String> {
    cli.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == option).then(|| v.trim().to_string())
    })
}

async fn show(ast: &Asterisk, id: &str) -> String {
    endpoint(ast, id).await.unwrap_or_else(|| panic!("{id} is not loaded:\n{}", ast.log_tail(40)))
}

fn assert_options(cli: &str, id: &str, want: &[(&str, &str)]) {
    for (option, value) in want {
        assert_eq!(shown(cli, option).as_deref(), Some(*value), "{id}: {option} in\n{cli}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_profile_loads_and_verifies_and_a_switch_from_nat_to_lan_is_applied() {
    let Some(build) = require("real::profiles::each_profile") else { return };
    let mut opts = Options::named("profiles");
    opts.pjsip_extra = WS_TRANSPORT.into();
    let ast = Asterisk::start(&build, opts).await.unwrap_or_else(|e| panic!("Asterisk starts: {e}"));
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, &specs("")).await;
    for id in ["4101", "4102", "4103"] {
        wait(&format!("{id} synced"), LIVE, || async {
            d.get(&format!("/extensions/{id}")).await.1["syncStatus"] == "synced"
        })
        .await;
    }
    let run = d.run_where("the first run applied", |r| r["outcome"] == "applied").await;
    assert_eq!(run["error"], serde_json::Value::Null, "{run:#}");

    // nat: the four NAT flags written.
    let nat = show(&ast, "4101").await;
    assert_options(
        &nat,
        "4101",
        &[("rewrite_contact", "true"), ("rtp_symmetric", "true"), ("force_rport", "true"), ("direct_media", "false")],
    );
    // lan: none written, Asterisk's defaults hold.
    let lan = show(&ast, "4102").await;
    assert_options(
        &lan,
        "4102",
        &[("rewrite_contact", "false"), ("rtp_symmetric", "false"), ("force_rport", "true"), ("direct_media", "true")],
    );
    let file = std::fs::read_to_string(ast.managed_file()).expect("managed file");
    let section = |id: &str| {
        let start = file.find(&format!("[{id}]\ntype = endpoint")).expect("section");
        file[start..].split("\n\n").next().unwrap_or_default().to_string()
    };
    assert!(!section("4102").contains("rewrite_contact"), "lan writes no NAT flag:\n{}", section("4102"));
    // webrtc: webrtc = yes and what Asterisk derives from it.
    let webrtc = show(&ast, "4103").await;
    assert_options(
        &webrtc,
        "4103",
        &[
            ("webrtc", "yes"),
            ("transport", "transport-ws"),
            ("use_avpf", "true"),
            ("media_encryption", "dtls"),
            ("dtls_auto_generate_cert", "Yes"),
            ("dtls_verify", "Fingerprint"),
            ("dtls_setup", "actpass"),
            ("ice_support", "true"),
            ("media_use_received_transport", "true"),
            ("rtcp_mux", "true"),
            ("bundle", "true"),
        ],
    );
    let (_, row) = d.get("/extensions/4103").await;
    assert_eq!(row["profile"], "webrtc", "{row}");
    let (_, live) = d.get("/extensions/4103/status").await;
    assert_eq!(live["endpoint"]["profileOptions"]["media_encryption"], "dtls", "{live}");

    // nat -> lan on the existing 4101: applied, verified, and Asterisk took
    // the flags back to its defaults.
    let before = d.last_run_id().await;
    std::fs::write(d.specs.join("team.yaml"), specs("    profile: lan\n")).expect("write");
    let run = d
        .run_where("the run switching 4101 to lan", |r| {
            r["id"].as_i64().is_some_and(|id| id > before) && r["updates"] == 1
        })
        .await;
    assert_eq!(run["outcome"], "applied", "{run:#}");
    let plan = run["plan"]["changes"][0].clone();
    assert_eq!(plan["extension"], "4101", "{run:#}");
    assert!(plan["profile"].as_str().is_some_and(|p| p.starts_with("profile lan:")), "{run:#}");
    wait("4101 shows lan", LIVE, || async { d.get("/extensions/4101").await.1["profile"] == "lan" }).await;
    assert_eq!(d.get("/extensions/4101").await.1["syncStatus"], "synced");
    let switched = show(&ast, "4101").await;
    assert_options(
        &switched,
        "4101",
        &[("rewrite_contact", "false"), ("rtp_symmetric", "false"), ("force_rport", "true"), ("direct_media", "true")],
    );
    d.stop().await;
}
