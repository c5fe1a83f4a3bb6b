//! The JSON API end to end: the daemon on a spec directory, the stand-in's
//! AMI and ARI behind it, the seed's write routes followed by its read
//! routes, /status, /runs, /calls — and no password in any response.

use crate::support::web::{Daemon, wait};
use asterisk_standin::ContactInfo;
use serde_json::{Value, json};

const SEED_BODY: &str = r#"{"extension":"1001","password":"Soundz2025","displayName":"Test User","context":"from-internal","transport":"transport-udp","codecs":"ulaw,alaw,g729"}"#;
const PASSWORDS: [&str; 2] = ["Soundz2025", "NewPass-7788"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_contract_end_to_end_and_no_password_in_any_response() {
    let d = Daemon::start().await;
    let c = d.standin.control();

    let (status, body) = d.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(status, 201, "{body}");
    wait("1001 in Asterisk", || {
        let c = c.clone();
        async move { c.endpoints() == ["1001", "1002"] }
    })
    .await;
    wait("1001 synced", || async { d.call("GET", "/extensions/1001", None).await.1["syncStatus"] == "synced" }).await;
    let (_, one) = d.call("GET", "/extensions/1001", None).await;
    assert_eq!(one["displayName"], "Test User");
    assert_eq!(one["codecs"], json!(["ulaw", "alaw", "g729"]));
    assert_eq!(one["secretKind"], "md5Cred");
    assert_eq!(one["registration"]["contacts"], 0);

    let (status, list) = d.call("GET", "/extensions", None).await;
    assert_eq!(status, 200);
    let numbers: Vec<&str> = list.as_array().expect("a list").iter().filter_map(|e| e["number"].as_str()).collect();
    assert_eq!(numbers, ["1001", "1002"]);
    let (_, found) = d.call("GET", "/extensions?q=agent", None).await;
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(d.call("GET", "/extensions/4242", None).await.0, 404);
    assert_eq!(d.call("GET", "/extensions?bogus=1", None).await.0, 400);

    // Live status: registered once the phone registers; softphone settings; no drift.
    assert!(c.register(ContactInfo::new("1001", 5071)));
    let (status, live) = d.call("GET", "/extensions/1001/status", None).await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(live["registered"], true);
    assert_eq!(live["contacts"][0]["uri"], "sip:1001@127.0.0.1:5071");
    assert_eq!(live["contacts"][0]["userAgent"], "PortSIP-standin-sipp");
    assert_eq!(live["endpoint"]["context"], "from-internal");
    assert_eq!(live["softphone"]["authUsername"], "1001");
    assert_eq!(live["softphone"]["server"], "pbx.example.com:5060");
    assert_eq!(live["softphone"]["transport"], "transport-udp");
    assert_eq!(live["drift"], json!([]), "{live}");

    // Update: a new password and name; still no plaintext anywhere.
    let (status, body) =
        d.call("PUT", "/extensions/1001", Some(r#"{"displayName":"Renamed","password":"NewPass-7788"}"#)).await;
    assert_eq!(status, 200, "{body}");
    wait("the rename applied", || async {
        d.call("GET", "/extensions/1001", None).await.1["displayName"] == "Renamed"
    })
    .await;

    // A call through the Stasis app shows in /calls.
    let id = c.start_call("callcenter", "1001", "Renamed", "from-internal", "998901234567").expect("a call");
    wait("the call continued", || {
        let c = c.clone();
        let id = id.clone();
        async move { c.continued(&id) }
    })
    .await;
    c.answer(&id);
    c.hang_up(&id, 16);
    wait("the call completed", || async {
        d.call("GET", "/calls?extension=1001", None).await.1["calls"][0]["disposition"] == "answered"
    })
    .await;
    let (_, calls) = d.call("GET", "/calls?extension=1001&direction=outbound&limit=5", None).await;
    assert_eq!(calls["calls"][0]["callee"], "998901234567");
    assert_eq!(calls["nextCursor"], Value::Null);
    assert_eq!(d.call("GET", "/calls?direction=sideways", None).await.0, 400);

    // Status, runs, readiness.
    let (status, st) = d.call("GET", "/status", None).await;
    assert_eq!(status, 200);
    assert_eq!(st["ready"]["status"], "True", "{st}");
    assert_eq!(st["asterisk"]["version"], "22.10.1");
    assert_eq!(st["database"]["reachable"], true);
    assert_eq!(st["extensions"], 2);
    assert_eq!(st["callLogger"]["connected"], true);
    let (_, runs) = d.call("GET", "/runs", None).await;
    let applied: Vec<&Value> = runs.as_array().expect("runs").iter().filter(|r| r["outcome"] == "applied").collect();
    assert!(applied.len() >= 3, "{runs}");
    let (status, run) = d.call("GET", &format!("/runs/{}", applied[0]["id"]), None).await;
    assert_eq!(status, 200);
    assert!(run["diff"].as_str().is_some_and(|diff| diff.contains("[1001]")), "{run}");
    assert_eq!(d.call("GET", "/runs/999999", None).await.0, 404);
    assert_eq!(d.call("GET", "/readyz", None).await.0, 200);

    // Prometheus metrics.
    let (status, metrics) = d.call("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("text").to_string();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
    };
    assert!(value("asterisk_gitops_runs_total{outcome=\"applied\"}") >= 3.0);
    let count = value("asterisk_gitops_run_duration_seconds_count");
    assert_eq!(value("asterisk_gitops_run_duration_seconds_bucket{le=\"+Inf\"}"), count);
    assert!(value("asterisk_gitops_run_duration_seconds_bucket{le=\"10\"}") <= count);
    assert_eq!(value("asterisk_gitops_extensions{status=\"synced\"}"), 2.0);
    assert_eq!(value("asterisk_gitops_asterisk_up"), 1.0);
    assert_eq!(value("asterisk_gitops_ari_up"), 1.0);
    assert!(value("asterisk_gitops_call_events_total") >= 4.0);
    assert!(metrics.contains("# TYPE asterisk_gitops_run_duration_seconds histogram"));

    // Delete: gone from Asterisk, then 404.
    let (status, body) = d.call("DELETE", "/extensions/1001", None).await;
    assert!(status == 200 || status == 204, "{status} {body}");
    wait("1001 gone", || async { d.call("GET", "/extensions/1001", None).await.0 == 404 }).await;
    assert_eq!(c.endpoints(), ["1002"]);

    // No response carried a password, nor the md5 hash made from it.
    let seen = d.seen.lock().expect("lock").join("\n");
    for p in PASSWORDS {
        assert!(!seen.contains(p), "a response carried the password {p}");
        let hash = asterisk_gitops::secret::md5_cred("1001", "asterisk", p);
        assert!(!seen.contains(&hash), "a response carried the md5 of {p}");
    }
    d.stop().await;
}

/// Every file a run leaves behind that can hold a secret or the estate
/// (state directory: database and its -wal/-shm; the managed file and its
/// `.previous`) is unreadable for other users.
#[tokio::test]
async fn no_file_the_daemon_creates_is_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start().await;
    let c = d.standin.control();
    let (status, body) = d.call("POST", "/extensions", Some(SEED_BODY)).await;
    assert_eq!(status, 201, "{body}");
    wait("1001 in Asterisk", || {
        let c = c.clone();
        async move { c.endpoints() == ["1001", "1002"] }
    })
    .await;
    let root = d._dir.path();
    let managed = root.join("asterisk/pjsip_gitops.conf");
    let previous = root.join("asterisk/pjsip_gitops.conf.previous");
    let mut seen = Vec::new();
    let mut stack = vec![root.join("state")];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        seen.push((p.clone(), meta.permissions().mode() & 0o777));
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).expect("ls").flatten().map(|e| e.path()));
        }
    }
    for p in [&managed, &previous] {
        let mode = std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", p.display());
        seen.push((p.to_path_buf(), mode));
    }
    let db = root.join("state/asterisk-gitops.db");
    assert!(seen.iter().any(|(p, m)| *p == db && *m == 0o600), "the database is 0600: {seen:?}");
    let open: Vec<_> = seen.iter().filter(|(_, m)| m & 0o007 != 0).collect();
    assert!(open.is_empty(), "world-accessible: {open:?}");
    assert!(seen.len() >= 4, "{seen:?}");
    d.stop().await;
}

/// A profile and a qualify frequency through the API: POST with them, GET
/// shows them, PUT switches the profile, an unknown one is a 400 at the
/// field that changes nothing; the stand-in's endpoint holds what each
/// profile sets (the reconciler verified it, or the row would not be synced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_and_qualify_frequency_through_the_api() {
    let d = Daemon::start().await;
    let c = d.standin.control();
    let body = r#"{"extension":"1003","md5Cred":"0123456789abcdef0123456789abcdef","context":"from-internal","transport":"transport-udp","codecs":"ulaw","profile":"lan","qualifyFrequency":30}"#;
    let (status, created) = d.call("POST", "/extensions", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["extension"]["profile"], "lan");
    assert_eq!(created["extension"]["qualifyFrequency"], 30);
    let synced = |want: &'static str| {
        let d = &d;
        move || async move {
            let (_, one) = d.call("GET", "/extensions/1003", None).await;
            one["syncStatus"] == "synced" && one["profile"] == want
        }
    };
    wait("1003 applied as lan", synced("lan")).await;
    let (_, one) = d.call("GET", "/extensions/1003", None).await;
    assert_eq!(one["qualifyFrequency"], 30, "{one}");
    assert_eq!(one["rewriteContact"], Value::Null, "lan writes no NAT flag: {one}");
    let (_, list) = d.call("GET", "/extensions", None).await;
    let row = list.as_array().expect("list").iter().find(|e| e["number"] == "1003").cloned().expect("1003 listed");
    assert_eq!((row["profile"].clone(), row["qualifyFrequency"].clone()), (json!("lan"), json!(30)));
    let (_, other) = d.call("GET", "/extensions/1002", None).await;
    assert_eq!((other["profile"].clone(), other["rewriteContact"].clone()), (json!("nat"), json!(true)), "{other}");
    let (_, live) = d.call("GET", "/extensions/1003/status", None).await;
    assert_eq!(live["endpoint"]["rewriteContact"], false, "Asterisk's default holds: {live}");

    // Switch to webrtc: the implied options show in the endpoint.
    let (status, put) =
        d.call("PUT", "/extensions/1003", Some(r#"{"profile":"webrtc","transport":"transport-udp"}"#)).await;
    assert_eq!(status, 200, "{put}");
    wait("1003 applied as webrtc", synced("webrtc")).await;
    let (_, live) = d.call("GET", "/extensions/1003/status", None).await;
    assert_eq!(live["endpoint"]["profileOptions"]["webrtc"], "yes", "{live}");
    assert_eq!(live["endpoint"]["profileOptions"]["media_encryption"], "dtls", "{live}");

    // An unknown profile: 400 naming the field, nothing written.
    let before = c.endpoints();
    for bad in [r#"{"profile":"office"}"#, r#"{"profile":7}"#] {
        let (status, err) = d.call("PUT", "/extensions/1003", Some(bad)).await;
        assert_eq!(status, 400, "{err}");
        let detail = &err["details"][0];
        assert!(detail["field"].as_str().is_some_and(|f| f.ends_with("profile")), "{err}");
        assert!(err.to_string().contains("nat, lan, webrtc") || bad.contains('7'), "{err}");
    }
    let (status, err) =
        d.call("POST", "/extensions", Some(&body.replace("1003", "1004").replace("\"lan\"", "\"wan\""))).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["details"][0]["field"], "profile", "{err}");
    assert!(err["details"][0]["message"].as_str().is_some_and(|m| m.contains("nat, lan, webrtc")), "{err}");
    let (_, one) = d.call("GET", "/extensions/1003", None).await;
    assert_eq!(one["profile"], "webrtc");
    assert_eq!(c.endpoints(), before);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_options_through_the_api_are_applied_shown_and_refused_by_field() {
    let d = Daemon::start().await;
    let c = d.standin.control();
    let body = r#"{"extension":"1005","md5Cred":"0123456789abcdef0123456789abcdef","context":"from-internal","transport":"transport-udp","codecs":"ulaw","options":{"endpoint":{"timers":"required","send_pai":true,"language":"fr"},"aor":{"minimum_expiration":120}}}"#;
    let (status, created) = d.call("POST", "/extensions", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["extension"]["options"]["endpoint"]["send_pai"], "yes", "{created}");
    wait("1005 applied with its options", || {
        let d = &d;
        async move {
            let (_, one) = d.call("GET", "/extensions/1005", None).await;
            one["syncStatus"] == "synced"
        }
    })
    .await;
    let (_, one) = d.call("GET", "/extensions/1005", None).await;
    assert_eq!(
        one["options"],
        json!({"aor.minimum_expiration": "120", "endpoint.language": "fr", "endpoint.send_pai": "yes", "endpoint.timers": "required"}),
        "{one}"
    );
    // Refused by field, nothing written: a misspelt name, a bad boolean, a
    // named field's option, a value that would break the line.
    let before = c.endpoints();
    for (bad, field) in [
        (r#"{"options":{"endpoint":{"timer":"yes"}}}"#, "options.endpoint.timer"),
        (r#"{"options":{"endpoint":{"send_pai":"maybe"}}}"#, "options.endpoint.send_pai"),
        (r#"{"options":{"endpoint":{"context":"x"}}}"#, "options.endpoint.context"),
        (r#"{"options":{"auth":{"realm":"a\nb"}}}"#, "options.auth.realm"),
    ] {
        let (status, err) = d.call("PUT", "/extensions/1005", Some(bad)).await;
        assert_eq!(status, 400, "{bad}: {err}");
        let at_field = |x: &Value| x["field"].as_str().is_some_and(|f| f.ends_with(field)) && x["line"].is_number();
        assert!(err["details"].as_array().is_some_and(|ds| ds.iter().any(at_field)), "{bad}: {err}");
        assert!(!err.to_string().contains("maybe") && !err.to_string().contains("a\nb"), "no value echoed: {err}");
    }
    let (status, err) = d.call("PUT", "/extensions/1005", Some(r#"{"options":{"trunk":{"a":"b"}}}"#)).await;
    assert_eq!(status, 400, "{err}");
    let (_, one) = d.call("GET", "/extensions/1005", None).await;
    assert_eq!(one["options"]["endpoint.timers"], "required", "unchanged: {one}");
    assert_eq!(c.endpoints(), before);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_import_plans_on_a_dry_run_then_lands_in_one_commit_and_exports_without_secrets() {
    let d = Daemon::start().await;
    let c = d.standin.control();
    let csv = crate::import::bulk_handler_csv(3);
    let before = c.endpoints();
    let (status, plan) = d.call("POST", "/extensions/import?dryRun=true", Some(&csv)).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["dryRun"], true);
    assert_eq!(plan["plan"]["creates"], 3, "{plan}");
    let first = &plan["plan"]["changes"][0];
    assert_eq!((first["extension"].clone(), first["action"].clone()), (json!("20000"), json!("create")), "{plan}");
    assert!(
        first["fields"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x["field"] == "displayName" && x["to"] == "Agent 0, Sales")),
        "{plan}"
    );
    assert_eq!(d.call("GET", "/extensions/20000", None).await.0, 404, "a dry run writes nothing");
    assert_eq!(c.endpoints(), before);

    // A bad codec: 400 by line and column, nothing written.
    let bad = csv.replace(
        "transport-udp,ulaw&alaw,all,rfc4733,1,60,20001@",
        "transport-udp,ulaw&nosuchcodec,all,rfc4733,1,60,20001@",
    );
    let (status, err) = d.call("POST", "/extensions/import", Some(&bad)).await;
    assert_eq!(status, 400, "{err}");
    let detail = &err["details"][0];
    assert_eq!((detail["line"].clone(), detail["field"].clone()), (json!(3), json!("codecs")), "{err}");
    assert!(detail["message"].as_str().is_some_and(|m| m.contains("column `allow`")), "{err}");
    assert_eq!(d.call("GET", "/extensions/20000", None).await.0, 404);

    let (status, done) = d.call("POST", "/extensions/import", Some(&csv)).await;
    assert_eq!(status, 201, "{done}");
    assert_eq!(done["file"], "import-20000-20002.yaml", "{done}");
    wait("the three imported extensions in Asterisk", || async { c.endpoints().contains(&"20002".to_string()) }).await;
    wait("20002 synced", || {
        let d = &d;
        async move { d.call("GET", "/extensions/20002", None).await.1["syncStatus"] == "synced" }
    })
    .await;
    // Importing the same rows again: each is named as existing.
    let (status, again) = d.call("POST", "/extensions/import?dryRun=true", Some(&csv)).await;
    assert_eq!(status, 400, "{again}");
    assert_eq!(again["details"].as_array().map(Vec::len), Some(3), "{again}");

    let resp = reqwest::get(format!("http://{}/extensions.csv", d.addr)).await.expect("csv");
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let text = resp.text().await.expect("body");
    assert!(text.starts_with("extension,displayName,"), "{text}");
    assert!(text.contains("\r\n20001,\"Agent 1, Sales\",from-internal,transport-udp,\"ulaw,alaw\","), "{text}");
    assert!(!text.contains("Pw-2000") && !text.contains("md5"), "no secret: {text}");
    let seen = d.seen.lock().expect("lock").join("\n");
    assert!(!seen.contains("Pw-2000"), "no password in any response");
    d.stop().await;
}
