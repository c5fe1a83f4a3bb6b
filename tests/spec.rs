//! Spec files end to end: the example estate, one fixture per error class,
//! the JSON Schema, rendering (snapshots and a property test), and the CLI.

use crate::support::{fixture, repo_root};
use asterisk_gitops::core::diag::Severity;
use asterisk_gitops::core::render::{self, Line, Renderer, SourceInfo};
use asterisk_gitops::core::spec::load::{Loaded, load_file};
use asterisk_gitops::core::spec::resolve::Locator;
use asterisk_gitops::core::spec::{self, Defaults, DesiredSet, ExtensionEntry, LoadOptions, StringList};
use asterisk_gitops::secret::{ProcessSecrets, SecretSource};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Secrets from a map, for rendering without touching the process environment.
#[derive(Default)]
struct MapSecrets {
    env: HashMap<String, String>,
    files: HashMap<PathBuf, String>,
}

impl SecretSource for MapSecrets {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn file(&self, dir: &Path, path: &Path) -> std::io::Result<String> {
        match self.files.get(path) {
            Some(s) => Ok(s.clone()),
            None => ProcessSecrets.file(dir, path),
        }
    }
}

fn example_secrets() -> MapSecrets {
    let mut s = MapSecrets::default();
    for (k, v) in [
        ("EXT_2001_PASSWORD", "Agent-One-2026"),
        ("EXT_2002_PASSWORD", "Agent-Two-2026"),
        ("EXT_2003_PASSWORD", "Sup-2026"),
    ] {
        s.env.insert(k.into(), v.into());
    }
    s
}

fn load_dir(dir: &Path) -> Loaded {
    spec::load_paths(&[dir.to_path_buf()], &LoadOptions::for_dir(dir))
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_asterisk-gitops"));
    c.current_dir(repo_root());
    c
}

#[test]
fn the_example_estate_is_valid_and_uses_every_secret_kind() {
    let loaded = load_dir(&repo_root().join("extensions.d"));
    let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(loaded.files.len() >= 3, "at least three files: {:?}", loaded.files);
    assert!(loaded.set.extensions.len() >= 9);
    let kinds: std::collections::BTreeSet<_> = loaded.set.extensions.iter().map(|e| e.secret.kind()).collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["md5Cred", "password", "passwordEnv", "passwordFile"]);
    // The only finding is the plain-text password the conference room still has.
    assert_eq!(loaded.diagnostics.len(), 1);
    assert_eq!(loaded.diagnostics[0].code, "plaintext-password");
    assert_eq!(loaded.diagnostics[0].location.file, "lobby.yaml");
    // Defaults merge: sales.yaml's labels reach the entry, which adds its own.
    let e1001 = loaded.set.get("1001").expect("1001 is declared");
    assert_eq!(e1001.labels.get("department"), Some("sales"));
    assert_eq!(e1001.labels.get("email"), Some("test.user@example.com"));
    assert_eq!(e1001.codecs, ["ulaw", "alaw", "g729"]);
    assert_eq!(e1001.rtp_symmetric, Some(true));
    assert_eq!(loaded.set.get("2001").expect("2001").codecs, ["ulaw", "alaw"], "comma-string codecs");
}

#[test]
fn validate_cli_accepts_the_examples_and_strict_refuses_the_plaintext_password() {
    let out = bin().args(["validate", "extensions.d"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 errors, 1 warning"), "{text}");

    let strict = bin().args(["validate", "--strict", "extensions.d"]).output().expect("runs");
    assert_eq!(strict.status.code(), Some(1));
}

/// (file, line, column, code, field) for every diagnostic the fixtures must produce.
const EXPECTED: &[(&str, u32, u32, &str, &str)] = &[
    ("bad_identifier.yaml", 5, 14, "invalid-identifier", "extensions[0].context"),
    ("bad_identifier.yaml", 10, 16, "invalid-identifier", "extensions[1].transport"),
    ("double_secret.yaml", 6, 18, "multiple-secrets", "extensions[0].passwordEnv"),
    ("duplicate_b.yaml", 6, 16, "duplicate-extension", "extension"),
    ("empty.yaml", 1, 1, "empty-file", ""),
    ("injection.yaml", 5, 18, "unsafe-value", "extensions[0].displayName"),
    ("injection.yaml", 8, 18, "unsafe-value", "extensions[1].displayName"),
    ("injection.yaml", 11, 15, "unsafe-value", "extensions[2].password"),
    ("injection.yaml", 13, 15, "unsafe-value", "extensions[3].callerId"),
    ("injection.yaml", 16, 18, "unsafe-value", "extensions[4].displayName"),
    ("injection.yaml", 19, 15, "unsafe-value", "extensions[5].callerId"),
    ("injection.yaml", 22, 19, "unsafe-value", "extensions[6].passwordFile"),
    ("malformed_number.yaml", 4, 16, "invalid-extension", "extensions[0].extension"),
    ("missing_secret.yaml", 4, 14, "missing-secret", "extensions[0]"),
    ("plaintext.yaml", 5, 15, "plaintext-password", "extensions[0].password"),
    ("secret_absolute_file.yaml", 5, 19, "secret-not-allowed", "extensions[0].passwordFile"),
    ("secret_env_pattern.yaml", 5, 18, "secret-not-allowed", "extensions[0].passwordEnv"),
    ("secret_parent_dir.yaml", 5, 19, "secret-not-allowed", "extensions[0].passwordFile"),
    ("secret_reserved_env.yaml", 5, 18, "secret-not-allowed", "extensions[0].passwordEnv"),
    ("secret_reserved_env.yaml", 7, 18, "secret-not-allowed", "extensions[1].passwordEnv"),
    ("syntax.yaml", 5, 12, "yaml-syntax", ""),
    ("unknown_codec.yaml", 5, 13, "unknown-codec", "extensions[0].codecs"),
    ("unknown_dtmf.yaml", 5, 15, "unknown-dtmf-mode", "extensions[0].dtmfMode"),
    ("unknown_field.yaml", 5, 5, "unknown-field", "extensions[0].displayname"),
    ("unknown_profile.yaml", 5, 14, "unknown-profile", "extensions[0].profile"),
    ("unknown_profile.yaml", 2, 87, "unknown-profile", "defaults.profile"),
    ("webrtc_transport.yaml", 5, 14, "webrtc-transport", "extensions[0].profile"),
    ("wrong_type.yaml", 4, 16, "wrong-type", "extensions[0].extension"),
    ("wrong_type.yaml", 8, 18, "wrong-type", "extensions[1].maxContacts"),
];

#[test]
fn one_run_over_the_broken_fixtures_reports_every_error_class_at_its_place() {
    let loaded = load_dir(&fixture("invalid"));
    let got: Vec<(String, u32, u32, &str, String)> = loaded
        .diagnostics
        .iter()
        .map(|d| (d.location.file.clone(), d.location.line, d.location.column, d.code, d.field.clone()))
        .collect();
    let want: Vec<(String, u32, u32, &str, String)> =
        EXPECTED.iter().map(|(f, l, c, code, field)| (f.to_string(), *l, *c, *code, field.to_string())).collect();
    assert_eq!(got, want, "{:#?}", loaded.diagnostics);
    // Only the warning is not an error; no broken file contributes an extension.
    assert!(loaded.diagnostics.iter().all(|d| (d.severity == Severity::Warning) == (d.code == "plaintext-password")));
    let numbers: Vec<&str> = loaded.set.extensions.iter().map(|e| e.extension.as_str()).collect();
    assert_eq!(numbers, ["4501", "5101"], "only duplicate_a.yaml and plaintext.yaml are clean");
}

#[test]
fn a_duplicate_names_both_places() {
    let loaded = load_dir(&fixture("invalid"));
    let dup = loaded.diagnostics.iter().find(|d| d.code == "duplicate-extension").expect("reported");
    let first = dup.related.as_ref().expect("the first place");
    assert_eq!((first.file.as_str(), first.line, first.column), ("duplicate_a.yaml", 4, 16));
    assert!(dup.to_string().contains("duplicate_a.yaml:4:16"), "{dup}");
}

#[test]
fn diagnostics_never_echo_a_secret() {
    let text = "extensions:\n  - extension: \"1\"\n    context: a\n    transport: b\n    codecs: ulaw\n    password: 98765432\n";
    let (_, diags) =
        load_file("t.yaml", &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(Path::new(".")), text);
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].code, "wrong-type");
    assert!(!diags[0].message.contains("98765432"), "{}", diags[0].message);
}

#[test]
fn every_diagnostic_names_a_field_or_is_about_the_whole_file() {
    let text = "defaults:\n  context: 1\n  colour: red\nextensions:\n  - extension: \"1\"\n    transport: t\n    codecs: [ulaw, ulaw]\n    md5Cred: xyz\n";
    let (exts, diags) =
        load_file("t.yaml", &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(Path::new(".")), text);
    assert!(exts.is_empty());
    let summary: Vec<(u32, u32, &str, &str)> =
        diags.iter().map(|d| (d.location.line, d.location.column, d.code, d.field.as_str())).collect();
    assert_eq!(
        summary,
        [
            (2, 12, "wrong-type", "defaults.context"),
            (3, 3, "unknown-field", "defaults.colour"),
            (7, 13, "invalid-value", "extensions[0].codecs"),
            (8, 14, "invalid-value", "extensions[0].md5Cred"),
        ],
        "{diags:#?}"
    );
}

#[test]
fn validate_github_format_annotates_file_line_and_column() {
    let out = bin()
        .args(["validate", "--format", "github", "tests/fixtures/invalid/unknown_codec.yaml"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("::error file=tests/fixtures/invalid/unknown_codec.yaml,line=5,col=13,title=unknown-codec::"),
        "{text}"
    );
}

#[test]
fn validate_refuses_secrets_from_outside_where_the_operator_allows() {
    for (file, line, col, field) in [
        ("secret_absolute_file.yaml", 5, 19, "passwordFile"),
        ("secret_parent_dir.yaml", 5, 19, "passwordFile"),
        ("secret_reserved_env.yaml", 5, 18, "passwordEnv"),
        ("secret_env_pattern.yaml", 5, 18, "passwordEnv"),
    ] {
        let path = format!("tests/fixtures/invalid/{file}");
        let out = bin().args(["validate", "--format", "github", &path]).output().expect("runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{file}: {text}");
        let want = format!("::error file={path},line={line},col={col},title=secret-not-allowed::");
        assert!(text.starts_with(&want), "{file}: {text}");
        assert!(text.contains(field), "{file} names the field: {text}");
    }
    let out = bin().args(["validate", "tests/fixtures/invalid/secret_reserved_env.yaml"]).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("extensions[0].passwordEnv") && text.contains("daemon's own variables"), "{text}");
}

#[test]
fn validate_refuses_a_password_file_that_is_a_symlink_out_of_the_secrets_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("extensions.d");
    std::fs::create_dir_all(spec.join("secrets")).expect("mkdir");
    std::fs::write(dir.path().join("host-secret.txt"), "the-hosts-secret\n").expect("write");
    std::fs::write(spec.join("secrets/inside.pw"), "Inside-Pw-1\n").expect("write");
    std::os::unix::fs::symlink(dir.path().join("host-secret.txt"), spec.join("secrets/link.pw")).expect("symlink");
    let yaml = |file: &str| {
        format!(
            "defaults: {{context: from-internal, transport: transport-udp, codecs: [ulaw]}}\nextensions:\n  - extension: \"5401\"\n    passwordFile: {file}\n"
        )
    };
    std::fs::write(spec.join("a.yaml"), yaml("inside.pw")).expect("write");
    let out = bin().arg("validate").arg(&spec).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    std::fs::write(spec.join("a.yaml"), yaml("link.pw")).expect("write");
    let out = bin().args(["validate", "--format", "github"]).arg(&spec).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let want = format!("::error file={},line=4,col=19,title=secret-not-allowed::", spec.join("a.yaml").display());
    assert!(text.starts_with(&want), "{text}");
    assert!(text.contains("outside the secrets directory") && !text.contains("the-hosts-secret"), "{text}");
    // render refuses it as well: nothing is printed.
    let out = bin().arg("render").arg(&spec).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty() && !String::from_utf8_lossy(&out.stderr).contains("the-hosts-secret"));
}

#[test]
fn validate_json_format_is_one_document() {
    let out = bin()
        .args(["validate", "--format", "json", "tests/fixtures/invalid/missing_secret.yaml"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["diagnostics"][0]["code"], "missing-secret");
    assert_eq!(doc["diagnostics"][0]["line"], 4);
}

#[test]
fn usage_errors_exit_2() {
    let out = bin().args(["validate", "--format", "yaml"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let out = bin().args(["hash-password", "10x1", "pw"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let out = bin().args(["no-such-command"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn hash_password_reads_stdin_and_matches_the_captured_md5_cred() {
    use std::io::Write;
    let mut child = bin()
        .args(["hash-password", "1002"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    child.stdin.take().expect("stdin").write_all(b"Soundz2025\n").expect("write");
    let out = child.wait_with_output().expect("waits");
    assert_eq!(out.status.code(), Some(0));
    // shared/asterisk/config/pjsip_gitops.conf: the md5_cred Asterisk accepted for 1002.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "281036cc5c24788fe74c0ae5d9c07baf");
}

// ---------------------------------------------------------------- schema

fn schema_validator() -> jsonschema::Validator {
    jsonschema::validator_for(&asterisk_gitops::core::schema::spec_schema()).expect("the schema compiles")
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    let v: serde_yaml::Value = serde_yaml::from_str(text).expect("yaml");
    serde_json::to_value(v).expect("json")
}

#[test]
fn the_committed_schema_is_current() {
    let committed =
        std::fs::read_to_string(repo_root().join(asterisk_gitops::core::schema::SCHEMA_PATH)).unwrap_or_default();
    let current = asterisk_gitops::core::schema::spec_schema_text();
    if committed != current && std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(repo_root().join(asterisk_gitops::core::schema::SCHEMA_PATH), &current).expect("write schema");
        return;
    }
    assert!(
        committed == current,
        "schema/extensions.schema.json is stale: run `UPDATE_SNAPSHOTS=1 cargo test` or `asterisk-gitops schema > schema/extensions.schema.json`"
    );
}

#[test]
fn the_schema_accepts_every_example_file() {
    let v = schema_validator();
    let loaded = load_dir(&repo_root().join("extensions.d"));
    for file in &loaded.files {
        let text = std::fs::read_to_string(repo_root().join("extensions.d").join(file)).expect("read");
        let errors: Vec<String> = v.iter_errors(&yaml_to_json(&text)).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{file}: {errors:?}");
        assert!(text.starts_with("# yaml-language-server: $schema="), "{file} references the schema");
    }
}

#[test]
fn the_schema_rejects_every_invalid_entry_it_can_express() {
    // Not expressible in a schema: YAML syntax (not JSON at all) and
    // duplicates across files.
    let expressible = [
        "bad_identifier.yaml",
        "double_secret.yaml",
        "injection.yaml",
        "malformed_number.yaml",
        "missing_secret.yaml",
        "unknown_codec.yaml",
        "unknown_dtmf.yaml",
        "unknown_field.yaml",
        "unknown_profile.yaml",
        "wrong_type.yaml",
    ];
    let v = schema_validator();
    for name in expressible {
        let doc = yaml_to_json(&std::fs::read_to_string(fixture("invalid").join(name)).expect("read"));
        let entries = doc["extensions"].as_array().expect("a list").clone();
        for (i, entry) in entries.into_iter().enumerate() {
            // Each entry alone, with the file's defaults: every one is broken on its own.
            let single = serde_json::json!({"defaults": doc.get("defaults").cloned().unwrap_or(serde_json::json!({})), "extensions": [entry]});
            assert!(!v.is_valid(&single), "{name} entry {i} should be rejected by the schema");
        }
    }
    // An empty file is YAML null: not an object.
    assert!(!v.is_valid(&serde_json::Value::Null));
}

// ---------------------------------------------------------------- render

fn render_dir(dir: &Path) -> String {
    let loaded = load_dir(dir);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    let renderer = Renderer::new(None).expect("built-in template");
    renderer
        .render(
            &loaded.set,
            &SourceInfo { source: "extensions.d".into(), revision: Some("0123abc".into()) },
            &example_secrets(),
        )
        .expect("renders")
}

fn check_snapshot(name: &str, actual: &str) {
    let path = fixture("render").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("snapshot", "rendered")
            .to_string();
        panic!("{name} differs from its snapshot (UPDATE_SNAPSHOTS=1 cargo test to accept):\n{diff}");
    }
}

#[test]
fn the_example_estate_renders_as_its_snapshot() {
    let text = render_dir(&repo_root().join("extensions.d"));
    check_snapshot("example_estate.conf", &text);
    // Disabled 1004 is not configured; the passwordFile and passwordEnv secrets were read.
    assert!(!text.contains("[1004]"));
    assert!(text.contains("password = Lobby-Phone-2026\n"), "passwordFile, trailing newline dropped");
    assert!(text.contains("password = Agent-One-2026\n"), "passwordEnv");
}

#[test]
fn rendering_is_deterministic_whatever_the_file_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = repo_root().join("extensions.d");
    // The same estate with its files renamed so they sort the other way round.
    for (i, name) in ["sales.yaml", "lobby.yaml", "browser.yaml", "support/agents.yaml"].iter().enumerate() {
        let text = std::fs::read_to_string(src.join(name)).expect("read");
        std::fs::write(dir.path().join(format!("{}-{}", 9 - i, name.replace('/', "-"))), text).expect("write");
    }
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    std::fs::copy(src.join("secrets/3001.password"), dir.path().join("secrets/3001.password")).expect("copy");
    let a = render_dir(&src);
    let b = render_dir(dir.path());
    assert_eq!(a, b);
    assert_eq!(a, render_dir(&src), "stable across runs");
}

#[test]
fn the_rendered_sections_match_what_a_real_asterisk_loaded() {
    // The two extensions of the capture, declared as a user would.
    let yaml = r#"
defaults: {context: from-internal, transport: transport-udp}
extensions:
  - extension: "1001"
    displayName: Test User
    codecs: [ulaw, alaw]
    password: Soundz2025
  - extension: "1002"
    codecs: [ulaw]
    md5Cred: 281036cc5c24788fe74c0ae5d9c07baf
"#;
    let (exts, _) =
        load_file("capture.yaml", &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(Path::new(".")), yaml);
    let set = DesiredSet::new(exts.into_iter().map(|(e, _)| e).collect());
    let ours = Renderer::new(None)
        .expect("template")
        .render(&set, &SourceInfo::default(), &MapSecrets::default())
        .expect("renders");
    let captured = std::fs::read_to_string(fixture("render/captured_pjsip_gitops.conf")).expect("fixture");
    let body = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !matches!(render::classify(l), Some(Line::Comment)))
            .map(str::to_string)
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .lines()
            .map(str::to_string)
            .collect()
    };
    // What our defaults add to what the capture set by hand, per extension:
    // the NAT options on the endpoint, remove_existing and qualify on the aor.
    let added = [
        "direct_media = no",
        "rtp_symmetric = yes",
        "force_rport = yes",
        "rewrite_contact = yes",
        "remove_existing = yes",
        "qualify_frequency = 60",
    ];
    let ours = body(&ours);
    for line in added {
        assert_eq!(ours.iter().filter(|l| *l == line).count(), 2, "{line} once per extension");
    }
    let ours: Vec<String> = ours.into_iter().filter(|l| !added.contains(&l.as_str())).collect();
    assert_eq!(ours, body(&captured));
}

#[test]
fn a_missing_secret_is_an_error_naming_the_extension_never_an_empty_password() {
    let loaded = load_dir(&repo_root().join("extensions.d"));
    let mut secrets = example_secrets();
    secrets.env.remove("EXT_2002_PASSWORD");
    let err = Renderer::new(None)
        .expect("template")
        .render(&loaded.set, &SourceInfo::default(), &secrets)
        .expect_err("missing");
    assert_eq!(err.to_string(), "extension 2002: environment variable EXT_2002_PASSWORD (passwordEnv) is not set");
    secrets.env.insert("EXT_2002_PASSWORD".into(), String::new());
    let err = Renderer::new(None)
        .expect("template")
        .render(&loaded.set, &SourceInfo::default(), &secrets)
        .expect_err("empty");
    assert!(err.to_string().contains("is empty"), "{err}");
    // A secret with a line break is refused, and the error does not show it.
    secrets.env.insert("EXT_2002_PASSWORD".into(), "abc\n[evil]".into());
    let err = Renderer::new(None)
        .expect("template")
        .render(&loaded.set, &SourceInfo::default(), &secrets)
        .expect_err("unsafe");
    assert!(!err.to_string().contains("evil"), "{err}");
}

#[test]
fn an_operators_templates_directory_replaces_the_built_in_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("_aor.j2"),
        "[{{ e.extension }}]\ntype = aor\nmax_contacts = {{ e.max_contacts }}\nremove_existing = yes\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join(render::TEMPLATE_NAME),
        "; custom\n{% for e in extensions %}\n{% include \"_aor.j2\" %}\n{% endfor %}\n",
    )
    .expect("write");
    let loaded = load_dir(&repo_root().join("extensions.d"));
    let text = Renderer::new(Some(dir.path()))
        .expect("loads")
        .render(&loaded.set, &SourceInfo::default(), &example_secrets())
        .expect("renders");
    assert!(text.starts_with("; custom\n[1001]\ntype = aor\nmax_contacts = 1\nremove_existing = yes\n"), "{text}");

    // A template that prints an unsafe string is stopped by the formatter.
    std::fs::write(dir.path().join(render::TEMPLATE_NAME), "{{ \"x\\n[y]\" }}\n").expect("write");
    let err = Renderer::new(Some(dir.path()))
        .expect("loads")
        .render(&loaded.set, &SourceInfo::default(), &example_secrets())
        .expect_err("refused");
    assert!(err.to_string().contains("unsafe value"), "{err}");

    let missing = tempfile::tempdir().expect("tempdir");
    let err = Renderer::new(Some(missing.path())).err().expect("no template there");
    assert!(err.to_string().contains("pjsip_gitops.conf.j2 not found"), "{err}");
}

#[test]
fn render_cli_writes_the_file_atomically_and_refuses_invalid_specs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("pjsip_gitops.conf");
    let out = bin()
        .args(["render", "extensions.d", "-o"])
        .arg(&out_file)
        .env("EXT_2001_PASSWORD", "a")
        .env("EXT_2002_PASSWORD", "b")
        .env("EXT_2003_PASSWORD", "c")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&out_file).expect("written");
    assert!(text.starts_with("; Managed by asterisk-gitops"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind: {leftovers:?}");

    let out =
        bin().args(["render", "tests/fixtures/invalid", "-o"]).arg(dir.path().join("bad.conf")).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("bad.conf").exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_codec.yaml:5:13"));
}

// ---------------------------------------------------------------- property

mod property {
    use super::*;
    use proptest::prelude::*;

    /// Strings that are often hostile: pjsip metacharacters, line breaks,
    /// control characters, long runs, plus arbitrary Unicode.
    fn nasty() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9 \\[\\];#=\"<>\\n\\r\\t\\x00\\x1b\u{85}\u{2028}-]{0,12}",
            "[0-9]{1,4}",
            "[a-z][a-z0-9-]{0,10}",
            Just("ulaw".to_string()),
            Just("x".repeat(300)),
        ]
    }

    fn opt<T: std::fmt::Debug + Clone + 'static>(s: impl Strategy<Value = T> + 'static) -> BoxedStrategy<Option<T>> {
        prop_oneof![Just(None), s.prop_map(Some)].boxed()
    }

    prop_compose! {
        fn entry()(
            extension in opt(nasty()),
            display_name in opt(nasty()),
            context in opt(nasty()),
            transport in opt(nasty()),
            codecs in opt(prop_oneof![nasty().prop_map(StringList::Comma), prop::collection::vec(nasty(), 0..3).prop_map(StringList::List)]),
            secret in 0..5u8,
            secret_value in nasty(),
            caller_id in opt(nasty()),
            mailboxes in opt(nasty().prop_map(StringList::Comma)),
            dtmf_mode in opt(nasty()),
            max_contacts in opt(0u32..200),
            labels in prop::collection::btree_map(nasty(), nasty(), 0..2),
        ) -> ExtensionEntry {
            let mut e = ExtensionEntry {
                extension, display_name, context, transport, codecs, caller_id, mailboxes, dtmf_mode, max_contacts, labels,
                ..Default::default()
            };
            match secret {
                0 => e.password = Some(secret_value),
                1 => e.md5_cred = Some(secret_value),
                2 => e.password_env = Some("P".into()),
                3 => e.password_file = Some(secret_value),
                _ => {}
            }
            e
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

        /// Arbitrary strings in every field either fail validation or render
        /// into a file whose every line is a header, a comment or one
        /// `key = value`, with exactly three sections, all named after the
        /// extension.
        #[test]
        fn anything_either_fails_validation_or_renders_three_clean_sections(e in entry(), env_value in nasty()) {
            let defaults = Defaults::default();
            let (ext, diags) = spec::resolve(&e, &defaults, &Locator { file: "p.yaml".into(), ..Default::default() });
            let Some(ext) = ext else {
                prop_assert!(diags.iter().any(|d| d.is_error()));
                return Ok(());
            };
            let number = ext.extension.clone();
            let set = DesiredSet::new(vec![ext]);
            let mut secrets = MapSecrets::default();
            secrets.env.insert("P".into(), env_value);
            let Ok(text) = Renderer::new(None).expect("template").render(&set, &SourceInfo::default(), &secrets) else {
                // A secret read at render time may be refused; that is an error, never a broken file.
                return Ok(());
            };
            let mut sections = Vec::new();
            for line in text.lines() {
                match render::classify(line) {
                    Some(Line::Section(name)) => sections.push(name.to_string()),
                    Some(_) => {}
                    None => prop_assert!(false, "bad line {line:?} in\n{text}"),
                }
            }
            prop_assert_eq!(sections, vec![number.clone(), number.clone(), number]);
        }

        /// The same through YAML: whatever serde_yaml writes, the loader
        /// either rejects or loads into something that renders cleanly.
        #[test]
        fn yaml_files_with_arbitrary_values_never_render_a_second_section(e in entry()) {
            let file = spec::SpecFile { defaults: None, extensions: vec![e] };
            let text = serde_yaml::to_string(&file).expect("serializes");
            let (exts, _) = load_file("p.yaml", &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(Path::new(".")), &text);
            let set = DesiredSet::new(exts.into_iter().map(|(e, _)| e).collect());
            let mut secrets = MapSecrets::default();
            secrets.env.insert("P".into(), "pw".into());
            if let Ok(text) = Renderer::new(None).expect("template").render(&set, &SourceInfo::default(), &secrets) {
                let sections = text.lines().filter(|l| matches!(render::classify(l), Some(Line::Section(_)))).count();
                prop_assert_eq!(sections, 3 * set.extensions.len());
                prop_assert!(render::check_structure(&text).is_ok());
            }
        }
    }
}

#[test]
fn a_template_with_a_misspelt_option_is_refused_by_validate_and_render_before_anything_is_written() {
    let tpl = tempfile::tempdir().expect("tempdir");
    let base = asterisk_gitops::core::render::DEFAULT_TEMPLATE;
    let line = base.lines().position(|l| l.trim_start().starts_with("rewrite_contact =")).expect("the option") + 1;
    let text = base.replacen("rewrite_contact =", "rewrite_contacts =", 1);
    std::fs::write(tpl.path().join(asterisk_gitops::core::render::TEMPLATE_NAME), text).expect("write");
    let env = [("EXT_2001_PASSWORD", "a"), ("EXT_2002_PASSWORD", "b"), ("EXT_2003_PASSWORD", "c")];

    let out =
        bin().arg("--templates").arg(tpl.path()).args(["validate", "extensions.d"]).envs(env).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("pjsip_gitops.conf.j2:{line}")), "names the template's line {line}: {stdout}");
    assert!(stdout.contains("rewrite_contacts"), "{stdout}");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pjsip_gitops.conf");
    let out = bin()
        .arg("--templates")
        .arg(tpl.path())
        .args(["render", "extensions.d", "-o"])
        .arg(&file)
        .envs(env)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("rewrite_contacts") && stderr.contains(&format!(":{line}:")), "{stderr}");
    assert!(!file.exists(), "nothing written");

    // The built-in template passes the same check.
    let out = bin().args(["validate", "extensions.d"]).envs(env).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn each_profile_renders_its_options_and_lan_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let md5 = "md5Cred: 0123456789abcdef0123456789abcdef";
    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            "defaults: {{context: c, transport: transport-udp, codecs: [ulaw]}}\nextensions:\n  - {{extension: \"1\", {md5}}}\n  - {{extension: \"2\", {md5}, profile: lan}}\n  - {{extension: \"3\", {md5}, profile: lan, directMedia: false}}\n  - {{extension: \"4\", {md5}, profile: webrtc, transport: transport-wss}}\n"
        ),
    )
    .expect("write");
    let text = render_dir(dir.path());
    let endpoint = |n: &str| -> String {
        let start = text.find(&format!("[{n}]\ntype = endpoint\n")).expect("endpoint section");
        text[start..].split("\n\n").next().unwrap_or_default().to_string()
    };
    let nat = endpoint("1");
    for line in ["direct_media = no", "rtp_symmetric = yes", "force_rport = yes", "rewrite_contact = yes"] {
        assert!(nat.contains(line), "{nat}");
    }
    assert!(!nat.contains("webrtc"), "{nat}");
    let lan = endpoint("2");
    for option in ["direct_media", "rtp_symmetric", "force_rport", "rewrite_contact", "webrtc"] {
        assert!(!lan.contains(option), "lan writes no {option}:\n{lan}");
    }
    assert!(
        endpoint("3").contains("direct_media = no") && !endpoint("3").contains("rewrite_contact"),
        "{}",
        endpoint("3")
    );
    let webrtc = endpoint("4");
    assert!(webrtc.contains("webrtc = yes") && webrtc.contains("transport = transport-wss"), "{webrtc}");
    assert!(!webrtc.contains("rewrite_contact") && !webrtc.contains("direct_media"), "{webrtc}");
}
