//! The import and export commands as a user runs them: `import pjsip` and
//! `import csv` (a 1,000-row FreePBX Bulk Handler export; a bad codec row
//! reported by line and column with nothing written), `export csv`.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asterisk-gitops")).args(args).current_dir(cwd).output().expect("runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub(crate) use crate::support::bulk_handler_csv;

#[test]
fn a_thousand_row_bulk_handler_export_imports_and_a_bad_codec_row_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let csv = dir.path().join("agents.csv");
    std::fs::write(&csv, bulk_handler_csv(1000)).expect("write");
    let out = run(&["import", "csv", "agents.csv", "--out", "extensions.d"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1000 extensions from a FreePBX Bulk Handler export"), "{}", text(&out));
    assert!(text(&out).contains("columns not carried: callwaiting_enable, voicemail"), "{}", text(&out));
    let yaml = std::fs::read_to_string(dir.path().join("extensions.d/agents.yaml")).expect("written");
    assert!(!yaml.contains("Pw-2"), "no password is written");
    let out = run(&["validate", "extensions.d"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1000 extensions"), "{}", text(&out));

    // Row 501 (line 502) names a codec Asterisk does not have.
    let bad = bulk_handler_csv(1000).replace(
        "20500,\"Agent 500, Sales\",,pjsip,Pw-20500-secret,ENABLED,novm,from-internal,transport-udp,ulaw&alaw",
        "20500,\"Agent 500, Sales\",,pjsip,Pw-20500-secret,ENABLED,novm,from-internal,transport-udp,ulaw&nosuchcodec",
    );
    std::fs::write(dir.path().join("more.csv"), bad).expect("write");
    let out = run(&["import", "csv", "more.csv", "--out", "extensions.d"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("more.csv:502:10"), "line and column of the cell: {}", text(&out));
    assert!(text(&out).contains("nosuchcodec") && text(&out).contains("column `allow`"), "{}", text(&out));
    assert!(!text(&out).contains("Pw-20500"), "no password in a report");
    assert!(!dir.path().join("extensions.d/more.yaml").exists(), "nothing written");
}

#[test]
fn import_pjsip_writes_the_same_files_twice_and_export_csv_has_no_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/import/sample-phones.conf");
    let out = run(&["import", "pjsip", fixture, "--out", "a"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 extensions imported"), "{}", text(&out));
    let out = run(&["import", "pjsip", fixture, "--out", "b"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let a = std::fs::read(dir.path().join("a/sample-phones.yaml")).expect("a");
    assert_eq!(a, std::fs::read(dir.path().join("b/sample-phones.yaml")).expect("b"), "the same bytes");
    let out = run(&["export", "csv", "a"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(csv.starts_with("extension,displayName,context,transport,codecs,"), "{csv}");
    assert!(csv.contains("\r\n6001,,from-internal,transport-udp,\"ulaw,gsm\",1,0,"), "{csv}");
    assert!(!csv.contains("md5") && !csv.contains("6f2d7942"), "no secret: {csv}");

    // A missing #include stops the import and names the line.
    std::fs::write(dir.path().join("broken.conf"), "[1]\ntype = aor\n#include nowhere.conf\n").expect("write");
    let out = run(&["import", "pjsip", "broken.conf", "--out", "c"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("broken.conf:3") && text(&out).contains("nowhere.conf"), "{}", text(&out));
}
