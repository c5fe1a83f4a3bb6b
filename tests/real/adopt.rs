//! Faithful adoption on a real Asterisk: load a hand-written PJSIP
//! configuration, read every attribute of every endpoint, auth and aor
//! through ARI's dynamic configuration (`GET …/res_pjsip/<type>/<id>`
//! lists them all), import it (`import::pjsip`), take the imported sections
//! out of pjsip.conf, let the daemon apply the imported specs, read again:
//! nothing differs but the credential's form (a plain-text password becomes
//! the md5_cred of the same password, never written as it is).
//!
//! Inputs: the phone examples of Asterisk's own pjsip.conf.sample
//! (`tests/fixtures/import/sample-phones.conf`, origin noted there) and a
//! generated 10,000-extension configuration built from templates.

use super::{Daemon, Source, Store, wait};
use asterisk_gitops::import::pjsip;
use asterisk_real::{ARI_USER, Asterisk, Options, REALM, require};
use std::collections::BTreeMap;
use std::time::Duration;

type Attributes = BTreeMap<String, String>;
/// (type, id) → every attribute Asterisk holds.
type Objects = BTreeMap<(String, String), Attributes>;

/// Every attribute of each (type, id) through ARI, on one keep-alive connection per worker.
async fn read_all(ast: &Asterisk, ids: &[String]) -> Objects {
    let client = reqwest::Client::new();
    let base = format!("{}/ari/asterisk/config/dynamic/res_pjsip", ast.ari_url());
    let wanted: Vec<(String, String)> =
        ids.iter().flat_map(|id| ["endpoint", "auth", "aor"].map(|k| (k.to_string(), id.clone()))).collect();
    let mut out = Objects::new();
    for chunk in wanted.chunks(8) {
        let gets = chunk.iter().map(|(kind, id)| {
            let (client, base) = (&client, &base);
            async move {
                let resp = client
                    .get(format!("{base}/{kind}/{id}"))
                    .basic_auth(ARI_USER, Some(&ast.ari_password))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("ARI GET {kind}/{id}: {e}"));
                let status = resp.status();
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                assert!(status.is_success(), "ARI GET {kind}/{id}: {status} {body}");
                let attrs: Attributes = body
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| Some((f["attribute"].as_str()?.to_string(), f["value"].as_str()?.to_string())))
                    .collect();
                ((kind.clone(), id.clone()), attrs)
            }
        });
        out.extend(futures_util::future::join_all(gets).await);
    }
    out
}

/// What differs between the objects before and after, beyond the
/// credential's form: a userpass auth with password P may become an md5
/// auth whose md5_cred is md5(username:realm:P) (and whose password_digest
/// Asterisk then shows as `MD5:` and that md5_cred).
fn differences(before: &Objects, after: &Objects) -> Vec<String> {
    let mut out = Vec::new();
    for (key, was) in before {
        let Some(now) = after.get(key) else {
            out.push(format!("{key:?} is gone"));
            continue;
        };
        let credential_kept = key.0 == "auth"
            && was.get("auth_type").map(String::as_str) == Some("userpass")
            && now.get("auth_type").map(String::as_str) == Some("md5")
            && now.get("md5_cred").is_some_and(|m| {
                let user = was.get("username").cloned().unwrap_or_default();
                let realm = was.get("realm").filter(|r| !r.is_empty()).map_or(REALM, String::as_str);
                *m == asterisk_gitops::secret::md5_cred(&user, realm, was.get("password").map_or("", String::as_str))
            });
        for attr in was.keys().chain(now.keys()).collect::<std::collections::BTreeSet<_>>() {
            if credential_kept && matches!(attr.as_str(), "auth_type" | "password" | "md5_cred") {
                continue;
            }
            // Asterisk 22 shows an md5 auth's credential again as password_digest `MD5:<md5_cred>`.
            if credential_kept
                && attr == "password_digest"
                && was.get(attr).is_none_or(String::is_empty)
                && now.get(attr).zip(now.get("md5_cred")).is_some_and(|(d, m)| *d == format!("MD5:{m}"))
            {
                continue;
            }
            let (a, b) = (was.get(attr), now.get(attr));
            if a != b {
                // Never print a credential, even in a failing test.
                let secret = matches!(attr.as_str(), "password" | "md5_cred" | "password_digest");
                let show = |v: Option<&String>| if secret { "<credential>".to_string() } else { format!("{v:?}") };
                out.push(format!("{} {}: {attr} was {}, is {}", key.0, key.1, show(a), show(b)));
            }
        }
    }
    out
}

/// Loads `conf` as the operator's own pjsip.conf, imports it, moves the
/// imported sections to the managed file through the daemon, and compares.
async fn adopt(build: &asterisk_real::Build, name: &str, conf: &str, ids: &[String], within: Duration) {
    let mut opts = Options::named(name);
    opts.pjsip_extra = conf.to_string();
    opts.trunk = false;
    let ast = Asterisk::start(build, opts).await.unwrap_or_else(|e| panic!("Asterisk starts: {e}"));
    let before = read_all(&ast, ids).await;
    assert_eq!(before.len(), ids.len() * 3, "every object is loaded before the import");

    let input = ast.dir().join("operator-pjsip.conf");
    std::fs::write(&input, conf).expect("write");
    let imported = pjsip::import(&[input], &pjsip::ImportOptions::default()).expect("imports");
    assert_eq!(imported.extensions(), ids.len(), "every phone is carried: {:?}", imported.skipped);
    let yaml = pjsip::to_yaml(&imported.files[0]).expect("yaml");
    assert!(
        !yaml.lines().any(|l| l.trim_start().trim_start_matches("- ").starts_with("password:")),
        "no plain-text password in the spec"
    );
    let policy = asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(&ast.dir().join("x"));
    let (exts, diags) = asterisk_gitops::core::spec::load::load_file("imported.yaml", &policy, &yaml);
    assert!(diags.is_empty(), "{diags:?}");
    assert!(exts.iter().all(|(e, _)| e.secret.kind() == "md5Cred"), "every secret is an md5Cred");

    // The operator's pjsip.conf without the adopted sections; the daemon writes them now.
    let pjsip_conf = ast.etc().join("pjsip.conf");
    let text = std::fs::read_to_string(&pjsip_conf).expect("pjsip.conf");
    assert!(text.contains(conf), "the sections are in pjsip.conf");
    std::fs::write(&pjsip_conf, text.replace(conf, "")).expect("rewrite pjsip.conf");
    // AMI answers Reload once the reload is done: 1-8 s at 10k extensions on a quiet machine,
    // more beside other tests, past the 5 s default for one action.
    let d = Daemon::start_with(&ast, Store::Sqlite, Source::Dir, &yaml, |file| {
        if let Some(ami) = file.ami.as_mut() {
            ami.timeout = Some(30.0);
        }
    })
    .await;
    let run = d.run_where("the run adopting the configuration", |r| r["outcome"] == "applied").await;
    assert_eq!(run["creates"].as_u64(), Some(ids.len() as u64), "{}", run["error"]);
    let last = ids.last().expect("ids").clone();
    wait("the last adopted extension synced", within, || async {
        d.get(&format!("/extensions/{last}")).await.1["syncStatus"] == "synced"
    })
    .await;
    let after = read_all(&ast, ids).await;
    let diff = differences(&before, &after);
    assert!(
        diff.is_empty(),
        "{} differences after adoption, first ones:\n{}",
        diff.len(),
        diff[..diff.len().min(40)].join("\n")
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_configs_phones_are_adopted_without_a_difference() {
    let Some(build) = require("real::adopt::the_sample_configs_phones") else { return };
    let conf =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/import/sample-phones.conf"))
            .expect("fixture");
    let ids: Vec<String> = ["6001", "6002", "7000"].map(String::from).into();
    adopt(&build, "adopt-sample", &conf, &ids, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_ten_thousand_phone_config_with_templates_is_adopted_without_a_difference() {
    let Some(build) = require("real::adopt::a_generated_ten_thousand_phone_config") else { return };
    let n = std::env::var("ADOPT_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let (conf, ids) = asterisk_gitops::estate::pjsip_conf(n);
    adopt(&build, "adopt-10k", &conf, &ids, Duration::from_secs(120)).await;
}
