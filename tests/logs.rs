//! The daemon's log lines as journald or a log shipper reads them: standard
//! error is a pipe, not a terminal.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

const AMI_SECRET: &str = "log-test-ami-secret-77";
const TOKEN: &str = "log-test-admin-token-77";
const HOOK: &str = "log-test-hook-secret-77";

/// Runs `serve` (AMI configured at a port nobody listens on, so its
/// connection failures are logged too) with standard error to a pipe, reads
/// it up to the "running" line, then ends the daemon and returns every byte
/// it wrote there.
fn serve_logs(filter: &str, args: &[&str], envs: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = dir.path().join("extensions.d");
    std::fs::create_dir_all(&specs).expect("mkdir");
    let mut c = Command::new(env!("CARGO_BIN_EXE_asterisk-gitops"));
    c.arg("serve")
        .arg("--spec-dir")
        .arg(&specs)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0", "--ami-addr", "127.0.0.1:1", "--ami-user", "gitops"])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("NO_COLOR")
        .env_remove("ASTERISK_GITOPS_LOG_FORMAT")
        .env_remove("ASTERISK_GITOPS_CONFIG")
        .env("ASTERISK_GITOPS_LOG", filter)
        .env("ASTERISK_GITOPS_AMI_SECRET", AMI_SECRET)
        .env("ASTERISK_GITOPS_ADMIN_TOKEN", TOKEN)
        .env("ASTERISK_GITOPS_WEBHOOK_SECRET", HOOK)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("the daemon starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        // Ends at EOF too: a daemon that exits says why in what it wrote.
        if stderr.read_until(b'\n', &mut line).expect("read stderr") == 0 {
            break;
        }
        out.extend_from_slice(&line);
        if String::from_utf8_lossy(&line).contains("asterisk-gitops is running") {
            let _ = child.kill();
            break;
        }
    }
    stderr.read_to_end(&mut out).expect("read the rest");
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("asterisk-gitops is running"), "the daemon started and said so:\n{text}");
    out
}

fn assert_no_secret(text: &str) {
    for secret in [AMI_SECRET, TOKEN, HOOK] {
        assert!(!text.contains(secret), "{secret} leaked into the logs:\n{text}");
    }
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let out = serve_logs("debug", &[], &[]);
    let text = String::from_utf8_lossy(&out);
    assert!(!out.contains(&0x1b), "an ESC byte (a colour code) in logs written to a pipe:\n{text:?}");
    assert!(text.contains(" INFO "), "text lines with their levels:\n{text}");
    assert_no_secret(&text);
}

#[test]
fn json_logs_are_one_object_a_line_with_level_and_message_and_no_secret() {
    for (args, envs) in
        [(&["--log-format", "json"][..], &[][..]), (&[][..], &[("ASTERISK_GITOPS_LOG_FORMAT", "json")][..])]
    {
        // At info, the daemon's level (sqlx's debug records of a statement carry
        // no message, only the statement's fields).
        let out = serve_logs("info", args, envs);
        let text = String::from_utf8_lossy(&out);
        assert!(!out.contains(&0x1b), "an ESC byte in JSON logs:\n{text:?}");
        assert_no_secret(&text);
        let mut levels = std::collections::BTreeSet::new();
        let mut running = false;
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}\n{text}"));
            let level = v["level"].as_str().unwrap_or_else(|| panic!("no level: {line}"));
            let message = v["message"].as_str().unwrap_or_else(|| panic!("no message: {line}"));
            levels.insert(level.to_string());
            running |= message == "asterisk-gitops is running" && v["listen"].as_str().is_some();
        }
        assert!(running, "the running line, with its fields at the top:\n{text}");
        assert!(levels.contains("INFO"), "levels {levels:?}:\n{text}");
    }
}
