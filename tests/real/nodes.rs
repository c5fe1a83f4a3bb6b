//! `nodes:`: one daemon managing three real Asterisk servers. An extension
//! goes live on all of them; a phone registered on one shows there only;
//! one server stopped is reported unreachable while a change still reaches
//! the others (the canary rule: an unreachable node is skipped), and it
//! converges when it is back; `asterisk-gitops status` lists every node.

use super::{Daemon, Source, Store, asterisk, endpoint, wait};
use crate::support::real::node_config as node;
use asterisk_real::{AMI_USER, Asterisk, require, sipp};
use serde_json::Value;
use std::time::Duration;

const LIVE: Duration = Duration::from_secs(30);

fn team(entries: &[&str]) -> String {
    let mut s = String::from(
        "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw, alaw]}\nextensions:\n",
    );
    for n in entries {
        let md5 = asterisk_gitops::secret::md5_cred(n, "asterisk", &format!("Node-Pass-{n}"));
        s.push_str(&format!("  - extension: \"{n}\"\n    displayName: Agent {n}\n    md5Cred: {md5}\n"));
    }
    s
}

/// The `nodes` entry of `/status` named `name`.
async fn node_status(d: &Daemon, name: &str) -> Value {
    let (code, st) = d.get("/status").await;
    assert_eq!(code, 200, "{st}");
    st["nodes"].as_array().and_then(|n| n.iter().find(|n| n["name"] == name).cloned()).unwrap_or(Value::Null)
}

/// A config file naming the nodes, for the command line.
fn cli_config(dir: &std::path::Path, nodes: &[(&str, &Asterisk)]) -> std::path::PathBuf {
    let mut yaml =
        format!("stateDir: {}\nspecDir: {}\nnodes:\n", dir.join("cli-state").display(), dir.join("specs").display());
    for (name, ast) in nodes {
        yaml.push_str(&format!(
            "  - name: {name}\n    ami: {{addr: '{}', user: {AMI_USER}, secret: '{}', timeout: 2}}\n    managedFile: {}\n",
            ast.ami_addr(),
            ast.ami_secret,
            ast.managed_file().display()
        ));
    }
    let path = dir.join("cli.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

fn cli(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_asterisk-gitops"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("ASTERISK_GITOPS_AMI_ADDR")
        .env_remove("ASTERISK_GITOPS_ARI_URL")
        .env_remove("DATABASE_URL")
        .output()
        .expect("runs")
}

/// `asterisk-gitops status --json` on a config file naming the three nodes.
fn cli_status(dir: &std::path::Path, nodes: &[(&str, &Asterisk)]) -> (Option<i32>, Value) {
    let out = cli(&cli_config(dir, nodes), &["status", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    for (_, ast) in nodes {
        assert!(!stdout.contains(&ast.ami_secret), "status printed an AMI secret");
    }
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("status --json prints JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code(), json)
}

fn cli_node<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["nodes"].as_array().and_then(|n| n.iter().find(|n| n["name"] == name)).unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_get_every_change_and_one_down_holds_no_other_back() {
    let Some(build) = require("real::nodes::three_nodes") else { return };
    let a = asterisk(&build, "node-a").await;
    let mut b = asterisk(&build, "node-b").await;
    let c = asterisk(&build, "node-c").await;
    // PostgreSQL when there is one (CI), else SQLite.
    let store = Store::both().await.pop().expect("SQLite at least");
    let nodes = vec![node("a", &a), node("b", &b), node("c", &c)];
    let d = Daemon::start_with(&a, store, Source::Dir, &team(&["1001"]), |f| {
        f.ami = None;
        f.ari = None;
        f.nodes = Some(nodes);
    })
    .await;

    // Created → live on all three.
    for ast in [&a, &b, &c] {
        wait("1001 live on every node", LIVE, || async { endpoint(ast, "1001").await.is_some() }).await;
    }

    // A phone registered on node b shows as registered on b only.
    let phone = sipp::Phone::new("1001", "Node-Pass-1001");
    let reg = phone.register(b.sip_addr()).await;
    assert!(reg.ok(), "1001 registers on node b:\n{}", reg.log);
    // Alive: a sipp on the phone's port answers node b's qualify OPTIONS.
    let _alive = phone.answer();
    let (code, st) = d.get("/extensions/1001/status").await;
    assert_eq!(code, 200, "{st:#}");
    assert_eq!(st["registered"], true, "registered on any node: {st:#}");
    let on = |n: &str| {
        st["nodes"].as_array().and_then(|l| l.iter().find(|x| x["node"] == n)).map(|x| x["registered"].clone())
    };
    assert_eq!((on("a"), on("b"), on("c")), (Some(false.into()), Some(true.into()), Some(false.into())), "{st:#}");
    // The registrations snapshot of node b counts it, a's and c's do not.
    let deadline = tokio::time::Instant::now() + LIVE;
    loop {
        let s = node_status(&d, "b").await;
        if s["registrations"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node b's registrations never counted the phone: {s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = d.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(metrics.contains("asterisk_gitops_node_registered_endpoints{node=\"b\"} 1"), "{metrics}");
    assert!(metrics.contains("asterisk_gitops_node_registered_endpoints{node=\"a\"} 0"), "{metrics}");
    assert!(metrics.contains("asterisk_gitops_node_up{node=\"c\"} 1"), "{metrics}");
    for n in ["a", "c"] {
        let s = node_status(&d, n).await;
        assert_eq!((s["reachable"].as_bool(), s["registrations"].as_u64()), (Some(true), Some(0)), "{s:#}");
        assert!(s["version"].as_str().is_some_and(|v| v.starts_with("22.")), "{s:#}");
    }

    // Node b stopped: reported unreachable, with the reason and no secret;
    // a change still reaches a and c.
    b.stop().await;
    std::fs::write(d.specs.join("team.yaml"), team(&["1001", "1002"])).expect("write");
    for ast in [&a, &c] {
        wait("1002 live on the nodes that answer", LIVE, || async { endpoint(ast, "1002").await.is_some() }).await;
    }
    let down = node_status(&d, "b").await;
    assert_eq!(down["reachable"], false, "{down:#}");
    assert!(down["error"].as_str().is_some_and(|e| !e.is_empty() && !e.contains(&b.ami_secret)), "{down:#}");
    wait("node b's last run says it was skipped as unreachable", LIVE, || async {
        node_status(&d, "b").await["lastApply"]["outcome"] == "unreachable"
    })
    .await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (code, json) = cli_status(tmp.path(), &[("a", &a), ("b", &b), ("c", &c)]);
    assert_eq!(code, Some(1), "a node down: exit 1: {json:#}");
    assert_eq!(cli_node(&json, "b")["reachable"], false, "{json:#}");
    assert_eq!(cli_node(&json, "a")["reachable"], true, "{json:#}");
    assert!(cli_node(&json, "c")["version"].as_str().is_some_and(|v| v.starts_with("22.")), "{json:#}");

    // Back: it converges at the next run.
    b.start_again().await.expect("node b starts again");
    // Asked for a run until one reaches it (the first may find its AMI
    // client still pausing between reconnects).
    let deadline = tokio::time::Instant::now() + LIVE;
    while endpoint(&b, "1002").await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "1002 never reached node b once it was back");
        assert_eq!(d.call("POST", "/reconcile", None).await.0, 202);
        let asked = tokio::time::Instant::now();
        wait("a run after the ask", LIVE, || async {
            node_status(&d, "b").await["lastApply"]["at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t.with_timezone(&chrono::Utc) > chrono::Utc::now() - asked.elapsed())
        })
        .await;
    }
    let back = node_status(&d, "b").await;
    assert_eq!(back["lastApply"]["outcome"], "applied", "{back:#}");
    let (code, json) = cli_status(tmp.path(), &[("a", &a), ("b", &b), ("c", &c)]);
    assert_eq!(code, Some(0), "every node answers: {json:#}");
    for n in ["a", "b", "c"] {
        assert_eq!(cli_node(&json, n)["reachable"], true, "{json:#}");
    }
    let seen = d.seen.lock().expect("lock").join("\n");
    for ast in [&a, &b, &c] {
        assert!(!seen.contains(&ast.ami_secret) && !seen.contains(&ast.ari_password), "a secret in a response");
    }
    d.stop().await;

    // `apply` with the daemon stopped: the first node, then the others in turn.
    let specs = tmp.path().join("specs");
    std::fs::create_dir_all(&specs).expect("mkdir");
    std::fs::write(specs.join("team.yaml"), team(&["1001", "1002", "1003"])).expect("write");
    let out = cli(&cli_config(tmp.path(), &[("a", &a), ("b", &b), ("c", &c)]), &["apply", "--yes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("node b: applied") && stdout.contains("node c: applied"), "{stdout}");
    for ast in [&a, &b, &c] {
        assert!(endpoint(ast, "1003").await.is_some(), "1003 applied on every node:\n{stdout}");
    }
}

/// The calls placed since `mark`, as `/calls` lists them (with `query` added).
async fn calls_since(d: &Daemon, mark: chrono::DateTime<chrono::Utc>, query: &str) -> Vec<Value> {
    let since = mark.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (code, body) = d.get(&format!("/calls?since={since}&limit=100{query}")).await;
    assert_eq!(code, 200, "{body}");
    body["calls"].as_array().cloned().unwrap_or_default()
}

/// Calls per node: two Asterisks without `systemname`, so their uniqueids
/// (and linkedids) are `<epoch>.<counter>`, the counter from 0 in each
/// process, and repeat across them; one daemon with both as nodes. A call
/// placed on each node at the same moment is one row each, `node` saying
/// where, its legs its own; rounds go on until both nodes gave their calls
/// the same linkedid (the same second, the counters in step), which must
/// still be two rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_logged_per_node_even_when_both_give_the_same_linkedid() {
    use super::calls::{PASSWORD, spec};
    let Some(build) = require("real::nodes::calls_are_logged_per_node_even_when_both_give_the_same_linkedid") else {
        return;
    };
    let plain = |name: &str| asterisk_real::Options { systemname: false, ..asterisk_real::Options::named(name) };
    let a = Asterisk::start(&build, plain("calls-node-a")).await.expect("node a starts");
    let b = Asterisk::start(&build, plain("calls-node-b")).await.expect("node b starts");
    let store = Store::both().await.pop().expect("SQLite at least");
    let d = Daemon::start_with(&a, store, Source::Dir, &spec(&["1001", "1002"]), |f| {
        f.ami = None;
        f.ari = None;
        f.nodes = Some(vec![node("a", &a), node("b", &b)]);
    })
    .await;
    for ast in [&a, &b] {
        wait("1001 and 1002 live on both nodes", LIVE, || async {
            endpoint(ast, "1001").await.is_some() && endpoint(ast, "1002").await.is_some()
        })
        .await;
    }
    wait("both nodes' call loggers connected", LIVE, || async {
        node_status(&d, "a").await["callLogger"]["connected"] == true
            && node_status(&d, "b").await["callLogger"]["connected"] == true
    })
    .await;
    // One caller and one callee per node, each a phone of its own.
    let phones =
        |ast: &Asterisk| (sipp::Phone::new("1001", PASSWORD), sipp::Phone::new("1002", PASSWORD), ast.sip_addr());
    let (on_a, on_b) = (phones(&a), phones(&b));
    for (caller, callee, server) in [&on_a, &on_b] {
        for p in [caller, callee] {
            let r = p.register(*server).await;
            assert!(r.ok(), "{} registers:\n{}", p.extension, r.log);
        }
    }

    let mut same = None;
    for round in 1..=6 {
        // Both calls early in one second, so their channels are made in the
        // same second on both nodes: an alignment, not a wait for anything.
        let ms = u64::from(chrono::Utc::now().timestamp_subsec_millis());
        if ms > 200 {
            tokio::time::sleep(Duration::from_millis(1050 - ms)).await;
        }
        let mark = chrono::Utc::now();
        let answering = [on_a.1.answer(), on_b.1.answer()];
        let hold = Duration::from_millis(500);
        let (ca, cb) = tokio::join!(on_a.0.call(on_a.2, "1002", hold), on_b.0.call(on_b.2, "1002", hold));
        assert!(ca.ok() && cb.ok(), "round {round}: both calls placed:\n{}\n{}", ca.log, cb.log);
        for ans in answering {
            assert!(ans.done(Duration::from_secs(20)).await.ok(), "round {round}: 1002 answered");
        }
        let deadline = tokio::time::Instant::now() + LIVE;
        let rows = loop {
            let rows = calls_since(&d, mark, "").await;
            if rows.len() >= 2 && rows.iter().all(|c| c["disposition"] == "answered") {
                break rows;
            }
            assert!(tokio::time::Instant::now() < deadline, "round {round}: two complete rows: {rows:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut nodes: Vec<&str> = rows.iter().filter_map(|c| c["node"].as_str()).collect();
        nodes.sort();
        assert_eq!(nodes, ["a", "b"], "round {round}: one row per node: {rows:#?}");
        let id = |n: &str| {
            rows.iter().find(|c| c["node"] == n).and_then(|c| c["channelId"].as_str()).unwrap_or_default().to_string()
        };
        let (id_a, id_b) = (id("a"), id("b"));
        for (n, id) in [("a", &id_a), ("b", &id_b)] {
            let only = calls_since(&d, mark, &format!("&node={n}")).await;
            assert_eq!(only.len(), 1, "round {round}: ?node={n}: {only:#?}");
            assert_eq!((only[0]["node"].as_str(), only[0]["channelId"].as_str()), (Some(n), Some(id.as_str())));
            let (code, call) = d.get(&format!("/calls/{id}?node={n}")).await;
            assert_eq!(code, 200, "{call}");
            assert_eq!((call["node"].as_str(), call["answeredBy"].as_str()), (Some(n), Some("1002")), "{call:#}");
            assert_eq!(call["legs"].as_array().map(Vec::len), Some(2), "round {round}: node {n}'s own legs: {call:#}");
            let leg_nodes: Vec<&str> =
                call["legs"].as_array().into_iter().flatten().filter_map(|l| l["node"].as_str()).collect();
            assert_eq!(leg_nodes, [n, n], "round {round}: each leg says its node: {call:#}");
        }
        let (code, csv) = d
            .get(&format!(
                "/calls?format=csv&node=b&since={}",
                mark.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ))
            .await;
        assert_eq!(code, 200);
        let csv = csv.as_str().unwrap_or_default().to_string();
        assert!(csv.lines().next().is_some_and(|h| h.ends_with(",node")), "{csv}");
        assert_eq!(csv.lines().count(), 2, "the header and node b's call: {csv}");
        assert!(csv.lines().nth(1).is_some_and(|l| l.ends_with(",b")), "{csv}");
        eprintln!("round {round}: node a's call {id_a}, node b's {id_b}");
        if id_a == id_b {
            same = Some(id_a);
            break;
        }
    }
    assert!(same.is_some(), "the two nodes never gave their calls the same linkedid (see the rounds above)");
    // Each node's call logger counts its own events in /metrics.
    let (_, metrics) = d.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    let counter = |name: &str, n: &str| -> Option<u64> {
        let key = format!("asterisk_gitops_node_{name}{{node=\"{n}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(key.as_str())).and_then(|v| v.trim().parse().ok())
    };
    for n in ["a", "b"] {
        let read = counter("call_events_total", n);
        assert!(read.is_some_and(|v| v > 0), "node {n}'s call events counted: {read:?}\n{metrics}");
        assert!(counter("call_events_handled_total", n).is_some_and(|v| v > 0), "node {n}: {metrics}");
        assert!(counter("call_log_connect_failures_total", n).is_some(), "node {n}: {metrics}");
    }
    let page =
        reqwest::get(format!("http://{}/ui/calls?node=b", d.addr)).await.expect("page").text().await.expect("text");
    assert!(page.contains(r#"<td class="hide-narrow node">b</td>"#), "the calls page shows the node:\n{page}");
    assert!(!page.contains(r#"<td class="hide-narrow node">a</td>"#), "?node=b shows node b's calls only:\n{page}");
    d.stop().await;
}

/// With the ari target and `nodes:` on a large estate (more than one drift
/// batch), every node's pushed objects are read back in the background,
/// not only the first node's: an object changed on node b behind the
/// daemon's back wakes a run (trigger `drift`) that puts it back. No
/// periodic run could find it (the interval is an hour), and nobody asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_large_ari_estate_a_change_on_the_second_node_is_found_in_the_background_and_repaired() {
    use asterisk_gitops::asterisk::ari::{Ari, AriConfig};
    use asterisk_gitops::config::{ApplyFileConfig, ReconcileFileConfig, SecretString};
    let Some(build) = require("real::nodes::on_a_large_ari_estate_a_change_on_the_second_node") else { return };
    let live = |name: &str| asterisk_real::Options::live(name).expect("the astdb sorcery snippet");
    let a = Asterisk::start(&build, live("sweep-node-a")).await.expect("node a starts");
    let b = Asterisk::start(&build, live("sweep-node-b")).await.expect("node b starts");
    let numbers: Vec<String> = (4000..4120).map(|n| n.to_string()).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let d = Daemon::start_with(&a, Store::Sqlite, Source::Dir, &team(&refs), |f| {
        f.ami = None;
        f.ari = None;
        f.nodes = Some(vec![node("a", &a), node("b", &b)]);
        f.apply = Some(ApplyFileConfig { target: Some("ari".into()), ..Default::default() });
        f.reconcile = Some(ReconcileFileConfig { interval: Some(3600.0), ..Default::default() });
    })
    .await;
    for ast in [&a, &b] {
        wait("all 120 live on both nodes", LIVE, || async { endpoint(ast, "4119").await.is_some() }).await;
    }
    wait("node b's first run recorded", LIVE, || async {
        node_status(&d, "b").await["lastApply"]["outcome"].as_str().is_some_and(|o| o != "skipped")
    })
    .await;
    let ari = Ari::new(AriConfig {
        url: b.ari_url(),
        user: asterisk_real::ARI_USER.into(),
        password: SecretString::new(&b.ari_password),
        app: "callcenter".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("an ARI client");
    let before = d.last_run_id().await;
    let changed = vec![("callerid".to_string(), "\"Changed Behind\" <4000>".to_string())];
    ari.put_object("endpoint", "4000", &changed).await.expect("PUT 4000 on node b");
    assert!(endpoint(&b, "4000").await.is_some_and(|e| e.contains("Changed Behind")), "the change took on node b");
    // A whole pass over 120 extensions takes at least a minute (sweep::PASS_MIN).
    wait("4000 on node b as pushed again", Duration::from_secs(180), || async {
        endpoint(&b, "4000").await.is_some_and(|e| !e.contains("Changed Behind") && e.contains("Agent 4000"))
    })
    .await;
    let runs = d.runs().await;
    assert!(
        runs.iter().any(|r| r["id"].as_i64().is_some_and(|id| id > before) && r["trigger"] == "drift"),
        "the repair came from a run the background read-back woke: {runs:#?}"
    );
    d.stop().await;
}
