//! The HTML UI in a real browser: Debian's chromium driven over WebDriver
//! (chromedriver, fantoccini). Sign in, create an extension through the
//! form and watch it turn Synced once the stand-in has reloaded, see an
//! inline error, open Status, edit, delete; read-only mode shows no edit
//! control. A screenshot of each page goes to target/screenshots/.
//!
//! Needs /usr/bin/chromium and /usr/bin/chromedriver (`.ci/run` installs
//! them). Without them the test says so loudly and passes, except under
//! CI=true, where it fails.

use crate::support::web::{Daemon, TOKEN, WITHIN, wait};
use asterisk_standin::ContactInfo;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PASSWORDS: [&str; 2] = ["Browser-Pass-9911", "Browser-Pass-2277"];

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver on a free port, or None (loudly) when it is not installed.
async fn driver() -> Option<(Driver, u16)> {
    let (chromium, chromedriver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
    if !std::path::Path::new(chromium).exists() || !std::path::Path::new(chromedriver).exists() {
        assert!(
            !crate::support::in_ci(),
            "CI=true but chromium/chromedriver are not installed: the browser tests cannot run"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: /usr/bin/chromium or /usr/bin/chromedriver is missing (apt-get install chromium chromium-driver); the browser tests did not run"
        );
        return None;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let d = Driver(child);
    let deadline = tokio::time::Instant::now() + WITHIN;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Some((d, port));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on {port} within {WITHIN:?}");
}

async fn browser(port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }),
    );
    ClientBuilder::native()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session")
}

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::support::repo_root().join("target"))
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

struct Session {
    c: Client,
    base: String,
    /// Every page's source, for the password scan.
    seen: Vec<String>,
}

impl Session {
    async fn goto(&mut self, path: &str) {
        self.c.goto(&format!("{}{path}", self.base)).await.expect("navigates");
        self.seen.push(self.c.source().await.expect("source"));
    }
    async fn shot(&mut self, name: &str) {
        let png = self.c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write screenshot");
        self.seen.push(self.c.source().await.expect("source"));
    }
    async fn text(&self, css: &str) -> String {
        self.c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.expect("text")
    }
    async fn fill(&self, css: &str, value: &str) {
        let e = self.c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        e.clear().await.expect("clear");
        e.send_keys(value).await.expect("type");
    }
    async fn click(&self, css: &str) {
        self.c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.expect("click");
    }
    async fn has(&self, css: &str) -> bool {
        self.c.find(Locator::Css(css)).await.is_ok()
    }
    /// Waits (up to 30 s) for an element after a click that navigates.
    async fn soon(&self, css: &str) -> bool {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while tokio::time::Instant::now() < deadline {
            if self.has(css).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
    async fn wait_text(&mut self, path: &str, css: &str, want: &str) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            self.goto(path).await;
            if self.has(css).await && self.text(css).await.contains(want) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path}: {css} did not show {want:?} within {WITHIN:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_edit_and_delete_through_the_browser() {
    let Some((_driver, port)) = driver().await else { return };
    let d = Daemon::start().await;
    let control = d.standin.control();
    let mut s = Session { c: browser(port).await, base: format!("http://{}", d.addr), seen: Vec::new() };

    // Anonymous: pages read, no edit control.
    s.goto("/ui/extensions").await;
    assert!(!s.has("#new-extension").await, "no write control before signing in");
    s.goto("/ui/signin").await;
    s.fill("#token", "not-the-token").await;
    s.click("#signin-submit").await;
    assert!(s.soon("#form-error").await && s.text("#form-error").await.contains("not valid"));
    s.fill("#token", TOKEN).await;
    s.click("#signin-submit").await;
    assert!(s.soon("#new-extension").await, "signed in, the list offers + New extension");
    s.shot("extensions").await;

    // Create through the form; an invalid codec first.
    s.click("#new-extension").await;
    assert!(s.soon("#extension").await);
    s.fill("#extension", "1001").await;
    s.fill("#displayName", "Browser User").await;
    s.fill("#password", PASSWORDS[0]).await;
    s.fill("#codecs", "ulaw,nosuchcodec").await;
    s.click("#save").await;
    assert!(s.soon("#error-codecs").await, "an inline error on the codecs field");
    assert!(s.text("#error-codecs").await.contains("nosuchcodec"));
    assert_eq!(
        s.c.find(Locator::Css("#password")).await.expect("field").prop("value").await.expect("value"),
        Some(String::new()),
        "the password is not echoed back"
    );
    s.shot("form-error").await;
    s.fill("#password", PASSWORDS[0]).await;
    s.fill("#codecs", "ulaw,alaw,g729").await;
    s.click("#save").await;
    assert!(s.soon("#notice").await, "saved: {}", s.c.source().await.unwrap_or_default());
    assert!(s.text("#notice").await.contains("Saved"));
    s.wait_text("/ui/extensions/1001", "#sync", "Synced").await;
    assert!(control.endpoints().contains(&"1001".to_string()), "the stand-in loaded it");
    s.shot("created").await;

    // Status: registered once the phone registers.
    assert!(control.register(ContactInfo::new("1001", 5071)));
    s.wait_text("/ui/extensions/1001", "#registration", "Registered").await;
    let source = s.c.source().await.expect("source");
    assert!(
        source.contains("PortSIP-standin-sipp") && source.contains("pbx.example.com:5060"),
        "contacts and the SIP server"
    );
    s.shot("status").await;

    // Edit.
    s.goto("/ui/extensions/1001/edit").await;
    s.fill("#displayName", "Renamed In Browser").await;
    s.fill("#password", PASSWORDS[1]).await;
    s.click("#save").await;
    // The save's answer first: navigating away before it arrives would
    // cancel the form's submission.
    assert!(s.soon("#notice").await, "saved: {}", s.c.source().await.unwrap_or_default());
    s.wait_text("/ui/extensions", "tr[data-extension='1001']", "Renamed In Browser").await;
    s.shot("edited").await;

    // Runs, a run's diff, calls, overview.
    s.goto("/ui/runs").await;
    s.shot("runs").await;
    // Times for people: `2026-12-01 16:58:40 UTC`, not RFC 3339 with nanoseconds.
    let started = s.c.find(Locator::Css("table time")).await.expect("a <time> in the runs list");
    let shown = started.text().await.expect("its text");
    assert!(chrono::NaiveDateTime::parse_from_str(&shown, "%Y-%m-%d %H:%M:%S UTC").is_ok(), "{shown}");
    let exact = started.attr("datetime").await.expect("attribute").expect("a datetime");
    assert!(chrono::DateTime::parse_from_rfc3339(&exact).is_ok(), "{exact}");
    // The newest run that applied something (a periodic no-op run may be newer).
    s.c.find(Locator::XPath("//tr[.//span[normalize-space()='applied']]//a"))
        .await
        .expect("an applied run in the list")
        .click()
        .await
        .expect("click");
    assert!(s.soon("#diff").await, "an applied run shows its diff");
    s.shot("run").await;
    let id = control.start_call("callcenter", "1001", "Renamed", "from-internal", "998901234567").expect("call");
    wait("the call continued", || {
        let c = control.clone();
        let id = id.clone();
        async move { c.continued(&id) }
    })
    .await;
    control.answer(&id);
    control.hang_up(&id, 16);
    s.wait_text("/ui/calls?extension=1001", "#calls", "answered").await;
    s.shot("calls").await;
    s.goto("/ui").await;
    assert_eq!(s.text("#ready").await, "Ready");
    s.shot("overview").await;
    // On a phone: the narrow layout drops secondary columns, nothing overflows.
    s.c.set_window_size(390, 844).await.expect("phone size");
    s.goto("/ui/extensions").await;
    let overflow =
        s.c.execute("return document.documentElement.scrollWidth > window.innerWidth + 1;", vec![])
            .await
            .expect("script");
    assert_eq!(overflow, serde_json::Value::Bool(false), "the list fits a phone's width");
    s.shot("extensions-phone").await;
    s.c.set_window_size(1280, 1000).await.expect("desktop size");

    // Delete, with confirmation.
    s.goto("/ui/extensions/1001").await;
    s.click("#delete").await;
    assert!(s.soon("#confirm-delete").await);
    s.shot("delete-confirm").await;
    s.click("#confirm-delete").await;
    wait("1001 gone from Asterisk", || {
        let c = control.clone();
        async move { !c.endpoints().contains(&"1001".to_string()) }
    })
    .await;

    // No page carried a password.
    let all = s.seen.join("\n");
    for p in PASSWORDS {
        assert!(!all.contains(p), "a page carried the password {p}");
    }
    s.c.close().await.expect("close");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_shows_no_edit_control() {
    let Some((_driver, port)) = driver().await else { return };
    let d = Daemon::start_with(true).await;
    let mut s = Session { c: browser(port).await, base: format!("http://{}", d.addr), seen: Vec::new() };
    s.goto("/ui/extensions").await;
    assert!(s.has("tr[data-extension='1002']").await, "the list is there");
    assert!(!s.has("#new-extension").await && !s.has("#signin").await, "no write control, no sign-in");
    let source = s.c.source().await.expect("source");
    assert!(!source.contains("/edit") && !source.contains("/delete"), "no edit or delete link");
    s.shot("read-only").await;
    s.goto("/ui/extensions/1002").await;
    assert!(!s.has("#edit").await && !s.has("#delete").await);
    s.goto("/ui/signin").await;
    assert!(s.c.source().await.expect("source").contains("Not Found") || !s.has("#token").await, "no sign-in form");
    s.c.close().await.expect("close");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_import_through_the_browser_shows_the_plan_before_one_commit() {
    let Some((_driver, port)) = driver().await else { return };
    let d = Daemon::start().await;
    let control = d.standin.control();
    let mut s = Session { c: browser(port).await, base: format!("http://{}", d.addr), seen: Vec::new() };
    s.goto("/ui/signin").await;
    s.fill("#token", TOKEN).await;
    s.click("#signin-submit").await;
    assert!(s.soon("#import-csv").await, "signed in, the list offers Import CSV");
    let dir = tempfile::tempdir().expect("tmp");

    // A bad codec row: reported by line, nothing written.
    let good = crate::support::bulk_handler_csv(25);
    let bad = good.replace(
        "transport-udp,ulaw&alaw,all,rfc4733,1,60,20003@",
        "transport-udp,ulaw&nosuchcodec,all,rfc4733,1,60,20003@",
    );
    let bad_path = dir.path().join("bad.csv");
    std::fs::write(&bad_path, &bad).expect("write");
    s.click("#import-csv").await;
    assert!(s.soon("#file").await);
    s.c.find(Locator::Css("#file"))
        .await
        .expect("file input")
        .send_keys(&bad_path.display().to_string())
        .await
        .expect("choose");
    s.click("#import-preview").await;
    assert!(s.soon("#import-errors").await, "{}", s.c.source().await.unwrap_or_default());
    let errors = s.text("#import-errors").await;
    assert!(errors.contains("line 5") && errors.contains("nosuchcodec"), "{errors}");
    s.shot("import-errors").await;

    // The good file: the plan, and nothing written until confirmed.
    let path = dir.path().join("agents.csv");
    std::fs::write(&path, &good).expect("write");
    s.goto("/ui/import").await;
    s.c.find(Locator::Css("#file"))
        .await
        .expect("file input")
        .send_keys(&path.display().to_string())
        .await
        .expect("choose");
    s.click("#import-preview").await;
    assert!(s.soon("#import-plan").await, "{}", s.c.source().await.unwrap_or_default());
    assert!(s.text("#import-summary").await.contains("25"), "{}", s.text("#import-summary").await);
    let rows = s.c.find_all(Locator::Css("#import-plan tbody tr")).await.expect("rows");
    assert_eq!(rows.len(), 25);
    assert!(s.text("#import-plan").await.contains("Agent 7, Sales"));
    s.shot("import-plan").await;
    assert!(!control.endpoints().contains(&"20000".to_string()), "nothing applied before confirming");
    let (status, _) = d_get(&d, "/extensions/20000").await;
    assert_eq!(status, 404, "nothing written before confirming");

    s.click("#import-confirm").await;
    assert!(s.soon("#import-done").await, "{}", s.c.source().await.unwrap_or_default());
    assert!(s.text("#import-done").await.contains("Imported 25 extensions"));
    s.shot("import-done").await;
    s.wait_text("/ui/extensions/20024", "#sync", "Synced").await;
    assert!(control.endpoints().contains(&"20024".to_string()));
    let all = s.seen.join("\n");
    assert!(!all.contains("Pw-2000"), "no password on any page");
    // Without the session's close chromedriver's kill left this Chromium running.
    s.c.close().await.expect("close");
    d.stop().await;
}

async fn d_get(d: &Daemon, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{}{path}", d.addr)).await.expect("get");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}
