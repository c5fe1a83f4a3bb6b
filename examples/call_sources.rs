//! Measures the two event sources the call log could read, on a real
//! Asterisk 22 (crates/asterisk-real, sipp phones): ARI's events socket with
//! `subscribeAll=true`, and CEL over AMI (cel_manager). For each call kind
//! (internal answered, unanswered, busy, outbound through Stasis, blind
//! transfer) it prints what each source delivered, then both sources' load
//! for N concurrent calls.
//!
//!   cargo run --release --example call_sources [-- N]      (ONLY=transfer: the transfer alone)
//!
//! The figures are in ARCHITECTURE.md ("Why CEL over AMI").
use asterisk_real::{Asterisk, Options, sipp};
use base64::Engine;
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Seen {
    ari: Vec<serde_json::Value>,
    ari_bytes: usize,
    ami: Vec<asterisk_gitops::asterisk::ami::Message>,
    ami_bytes: usize,
}

fn endpoint(ext: &str, pw: &str) -> String {
    format!(
        "[{ext}]\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw\ntransport = transport-udp\nauth = {ext}\naors = {ext}\n\n\
         [{ext}]\ntype = auth\nauth_type = userpass\nusername = {ext}\npassword = {pw}\n\n\
         [{ext}]\ntype = aor\nmax_contacts = 1\nremove_existing = yes\n\n"
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let build = asterisk_real::build()?;
    let mut managed: String = ["1001", "1002", "1003"].iter().map(|e| endpoint(e, "pw")).collect();
    // The load: an unauthenticated `sipp` endpoint calls, a static contact answers.
    let uas_port = asterisk_real::free_port();
    managed.push_str(&format!(
        "[sipp]\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw\ntransport = transport-udp\naors = sipp\n\n\
         [sipp]\ntype = aor\n\n\
         [2000]\ntype = endpoint\ncontext = from-internal\ndisallow = all\nallow = ulaw\ntransport = transport-udp\naors = 2000\n\n\
         [2000]\ntype = aor\ncontact = sip:2000@127.0.0.1:{uas_port}\n\n"
    ));
    let ast = Asterisk::start(&build, Options { managed, ..Options::named("sources") }).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));

    // ARI, subscribeAll, as the app the dialplan's Stasis() names (continued at once).
    let base = format!("{}/ari", ast.ari_url());
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", asterisk_real::ARI_USER, ast.ari_password));
    let ws_url = format!("ws://{}/events?app=callcenter&subscribeAll=true", base.trim_start_matches("http://"));
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = ws_url.into_client_request()?;
    req.headers_mut().insert("Authorization", format!("Basic {auth}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let http = reqwest::Client::new();
    {
        let seen = seen.clone();
        let (user, pw) = (asterisk_real::ARI_USER.to_string(), ast.ari_password.clone());
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let tokio_tungstenite::tungstenite::Message::Text(t) = m else { continue };
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                if v["type"] == "StasisStart" {
                    let id = v["channel"]["id"].as_str().unwrap_or_default().to_string();
                    let _ =
                        http.post(format!("{base}/channels/{id}/continue")).basic_auth(&user, Some(&pw)).send().await;
                }
                let mut s = seen.lock().expect("lock");
                s.ari_bytes += t.len();
                s.ari.push(v);
            }
        });
    }
    // AMI with call events (CEL among them), as the AMI user of the examples.
    let mut tcp = tokio::net::TcpStream::connect(ast.ami_addr()).await?;
    tcp.write_all(
        format!(
            "Action: Login\r\nUsername: {}\r\nSecret: {}\r\nEvents: call\r\n\r\n",
            asterisk_real::AMI_USER,
            ast.ami_secret
        )
        .as_bytes(),
    )
    .await?;
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut framer = asterisk_gitops::asterisk::ami::Framer::default();
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok(k) = tcp.read(&mut buf).await else { return };
                if k == 0 {
                    return;
                }
                let mut out = Vec::new();
                let _ = framer.feed(&buf[..k], &mut out);
                let mut s = seen.lock().expect("lock");
                s.ami_bytes += k;
                s.ami.extend(out.into_iter().filter(|m| m.get("Event").is_some()));
            }
        });
    }
    let phones: BTreeMap<&str, sipp::Phone> =
        ["1001", "1002", "1003"].iter().map(|e| (*e, sipp::Phone::new(e, "pw"))).collect();
    for p in phones.values() {
        assert!(p.register(ast.sip_addr()).await.ok(), "{} registers", p.extension);
    }
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    settle().await;
    let mut kinds: Vec<(&str, Seen)> = Vec::new();
    let take = |name: &'static str, kinds: &mut Vec<(&str, Seen)>| {
        let s = std::mem::take(&mut *seen.lock().expect("lock"));
        kinds.push((name, s));
    };
    take("registration", &mut kinds);

    let a = phones["1002"].answer();
    let o = phones["1001"].call(ast.sip_addr(), "1002", Duration::from_millis(1500)).await;
    let _ = a.done(Duration::from_secs(10)).await;
    println!("internal answered: caller ok {}", o.ok());
    settle().await;
    take("internal answered", &mut kinds);

    let only_transfer = std::env::var("ONLY").is_ok_and(|v| v == "transfer");
    if !only_transfer {
        let r = phones["1002"].ring();
        let o = phones["1001"].call_unanswered(ast.sip_addr(), "1002").await;
        let _ = r.done(Duration::from_secs(10)).await;
        println!("internal unanswered (Dial timeout): caller ended as expected {}", o.ok());
        settle().await;
        take("internal unanswered (timeout)", &mut kinds);

        let b = phones["1002"].busy();
        let o = phones["1001"].call_unanswered(ast.sip_addr(), "1002").await;
        let _ = b.done(Duration::from_secs(10)).await;
        println!("internal busy: caller ended as expected {}", o.ok());
        settle().await;
        take("internal busy", &mut kinds);

        let carrier = sipp::answer_on(ast.trunk_port);
        let o = phones["1001"].call(ast.sip_addr(), "998901234567", Duration::from_millis(1500)).await;
        let _ = carrier.done(Duration::from_secs(10)).await;
        println!("outbound via Stasis: caller ok {}", o.ok());
        settle().await;
        take("outbound 998901234567 (Stasis)", &mut kinds);
    }

    let t = phones["1002"].answer_and_transfer("1003");
    let target = phones["1003"].answer();
    let o = phones["1001"].call_transferred(ast.sip_addr(), "1002").await;
    let t = t.done(Duration::from_secs(15)).await;
    let _ = target.done(Duration::from_secs(15)).await;
    println!("blind transfer: caller ok {}, transferor ok {}", o.ok(), t.ok());
    if !t.ok() {
        println!("{}", t.log.chars().take(4000).collect::<String>());
        println!("Asterisk's log:\n{}", ast.log_tail(40));
    }
    settle().await;
    take("blind transfer 1001→1002→1003", &mut kinds);

    for (name, s) in &kinds {
        println!("\n=== {name}");
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        let mut ids = BTreeSet::new();
        for v in &s.ari {
            *types.entry(v["type"].as_str().unwrap_or("?").to_string()).or_default() += 1;
            if let Some(id) = v["channel"]["id"].as_str() {
                ids.insert(id.to_string());
            }
        }
        println!("ARI subscribeAll: {} events, {} bytes, {} channels: {types:?}", s.ari.len(), s.ari_bytes, ids.len());
        for v in &s.ari {
            let t = v["type"].as_str().unwrap_or("");
            if matches!(t, "ChannelHangupRequest" | "ChannelDestroyed" | "Dial" | "BridgeBlindTransfer") {
                let ch = &v["channel"];
                println!(
                    "  {t} channel={} cause={} dialstatus={} peer={} linkedid-field={}",
                    ch["name"],
                    v["cause"],
                    v["dialstatus"],
                    v["peer"]["name"],
                    ch.get("linkedid").is_some()
                );
            }
        }
        let cel: Vec<_> = s.ami.iter().filter(|m| m.get("Event") == Some("CEL")).collect();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut all: BTreeMap<String, usize> = BTreeMap::new();
        for m in &s.ami {
            *all.entry(m.get("Event").unwrap_or("?").to_string()).or_default() += 1;
        }
        let linked: BTreeSet<_> = cel.iter().filter_map(|m| m.get("LinkedID")).collect();
        for m in &cel {
            *names.entry(m.get("EventName").unwrap_or("?").to_string()).or_default() += 1;
        }
        println!(
            "AMI: {} events ({} bytes), {} of them CEL, {} linkedids: {names:?}\n  all AMI call events: {all:?}",
            s.ami.len(),
            s.ami_bytes,
            cel.len(),
            linked.len()
        );
        for m in &cel {
            println!(
                "  CEL {} ch={} uid={} linked={} peer={} exten={} ts={} extra={}",
                m.get("EventName").unwrap_or(""),
                m.get("Channel").unwrap_or(""),
                m.get("UniqueID").unwrap_or(""),
                m.get("LinkedID").unwrap_or(""),
                m.get("Peer").unwrap_or(""),
                m.get("Exten").unwrap_or(""),
                m.get("Timestamp").unwrap_or(""),
                m.get("Extra").unwrap_or("")
            );
        }
    }

    // Load: N concurrent calls (sipp uac → 2000, a sipp uas), held 10 s.
    let mut uas = tokio::process::Command::new("sipp")
        .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &uas_port.to_string(), "-nostdin", "-aa"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let t0 = std::time::Instant::now();
    let st = tokio::process::Command::new("sipp")
        .args(["-sn", "uac", "-s", "2000", "-i", "127.0.0.1", "-p", &asterisk_real::free_port().to_string()])
        .args(["-m", &n.to_string(), "-l", &n.to_string(), "-r", "50", "-d", "10000", "-nostdin", "-aa"])
        .arg(ast.sip_addr().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await?;
    settle().await;
    let _ = uas.kill().await;
    let s = std::mem::take(&mut *seen.lock().expect("lock"));
    let cel = s.ami.iter().filter(|m| m.get("Event") == Some("CEL")).count();
    let ends = s.ami.iter().filter(|m| m.get("EventName") == Some("LINKEDID_END")).count();
    println!(
        "\n=== load: {n} concurrent calls held 10 s (sipp exit {:?}, {:.1} s)\nARI subscribeAll: {} events, {} bytes ({:.1} events a call)\nAMI call events: {} events, {} bytes; CEL {} ({:.1} a call), LINKEDID_END {ends}",
        st.code(),
        t0.elapsed().as_secs_f64(),
        s.ari.len(),
        s.ari_bytes,
        s.ari.len() as f64 / n as f64,
        s.ami.len(),
        s.ami_bytes,
        cel,
        cel as f64 / n as f64
    );
    Ok(())
}
