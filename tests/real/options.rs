//! Extra `options` on a real Asterisk: an extension with options of each
//! object type is applied, verified, and Asterisk holds every one (seen
//! through its own CLI); a value our checks let through but Asterisk
//! refuses (no type is declared for `callerid_privacy`) fails the run by
//! that option, and Asterisk keeps the previous definition.

use super::{Daemon, Source, Store, endpoint, wait};
use asterisk_real::require;
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);
const MD5: &str = "0123456789abcdef0123456789abcdef";

fn specs(extra: &str) -> String {
    format!(
        "defaults:\n  context: from-internal\n  transport: transport-udp\n  codecs: [ulaw]\n  options:\n    endpoint: {{timers: required}}\n\
         extensions:\n  - extension: \"4201\"\n    md5Cred: {MD5}\n    options:\n      endpoint:\n        pickup_group: \"9,1-2\"\n        send_pai: true\n        language: fr\n        tos_audio: ef\n{extra}\
         \x20     aor: {{minimum_expiration: 120, qualify_timeout: 2.5}}\n      auth: {{realm: example.com}}\n"
    )
}

/// `name: value` lines of a `pjsip show endpoint` section: the value of `option`.
fn shown(cli: &str, option: &str) -> Vec<String> {
    cli.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == option).then(|| v.trim().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_with_extra_options_is_applied_and_asterisk_holds_each_one() {
    let Some(build) = require("real::options::an_extension_with_extra_options") else { return };
    let ast = super::asterisk(&build, "options").await;
    let d = Daemon::start(&ast, Store::Sqlite, Source::Dir, &specs("")).await;
    wait("4201 synced", LIVE, || async { d.get("/extensions/4201").await.1["syncStatus"] == "synced" }).await;
    let run = d.run_where("the first run applied", |r| r["outcome"] == "applied").await;
    assert_eq!(run["error"], serde_json::Value::Null, "{run:#}");
    let cli = endpoint(&ast, "4201").await.unwrap_or_else(|| panic!("4201 is not loaded:\n{}", ast.log_tail(40)));
    let cli = format!("{cli}\n{}\n{}", ast.cli("pjsip show aor 4201").await, ast.cli("pjsip show auth 4201").await);
    for (option, want) in [
        ("timers", "required"),
        ("pickup_group", "1,2,9"),
        ("send_pai", "true"),
        ("language", "fr"),
        ("tos_audio", "184"),
        ("minimum_expiration", "120"),
        ("qualify_timeout", "2.500000"),
        ("realm", "example.com"),
    ] {
        let got = shown(&cli, option);
        assert!(
            got.iter().any(|g| g.replace(' ', "") == want),
            "4201: {option} is {got:?} in Asterisk, the spec sets {want}\n{cli}"
        );
    }
    let (_, row) = d.get("/extensions/4201").await;
    assert_eq!(row["options"]["endpoint.timers"], "required", "inherited from defaults: {row}");

    // A value Asterisk refuses: the run fails naming the option, the old definition stays.
    let before = d.last_run_id().await;
    std::fs::write(d.specs.join("team.yaml"), specs("        callerid_privacy: bogus\n")).expect("write");
    let run = d
        .run_where("the run with the refused value", |r| {
            r["id"].as_i64().is_some_and(|id| id > before) && r["outcome"] != "applied"
        })
        .await;
    assert!(run.to_string().contains("callerid_privacy"), "the failure names the option: {run:#}");
    let (_, row) = d.get("/extensions/4201").await;
    assert_eq!(row["syncStatus"], "failed", "{row}");
    assert!(row["lastError"].as_str().is_some_and(|e| e.contains("callerid_privacy")), "{row}");
    let cli = endpoint(&ast, "4201").await.expect("the previous 4201 is kept");
    assert_eq!(shown(&cli, "language"), ["fr"], "{cli}");

    let before = d.last_run_id().await;
    std::fs::write(d.specs.join("team.yaml"), specs("        callerid_privacy: prohib\n")).expect("write");
    d.run_where("the run with a good value", |r| {
        r["id"].as_i64().is_some_and(|id| id > before) && r["outcome"] == "applied"
    })
    .await;
    wait("4201 synced again", LIVE, || async { d.get("/extensions/4201").await.1["syncStatus"] == "synced" }).await;
    let cli = endpoint(&ast, "4201").await.expect("4201");
    assert_eq!(shown(&cli, "callerid_privacy"), ["prohib"], "{cli}");
    d.stop().await;
}
