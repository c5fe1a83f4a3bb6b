//! The fuzzers' committed corpus (`fuzz/corpus/<target>/`: seeds from the
//! fixtures, hand-made edge cases, and what the fuzz runs kept), replayed
//! through each entry point of `asterisk_gitops::fuzzing`: no input may
//! panic, and each target's property must hold (an accepted spec renders
//! the same text twice, a framed AMI message round-trips, the webhook
//! verifier accepts only the right signature). Fast: no instrumentation.

use asterisk_gitops::fuzzing;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = crate::support::repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read")))
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run) = fuzzing::TARGETS.iter().find(|(name, _)| *name == target).expect("a target of that name");
    let files = corpus(target);
    assert!(files.len() >= 10, "the {target} corpus has only {} inputs", files.len());
    let mut failed = Vec::new();
    for (name, data) in &files {
        if let Err(p) = std::panic::catch_unwind(|| run(data)) {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            failed.push(format!("{name}: {}", msg.unwrap_or_default()));
        }
    }
    assert!(failed.is_empty(), "{target}: {} of {} inputs failed:\n{}", failed.len(), files.len(), failed.join("\n"));
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in fuzzing::TARGETS {
        assert!(!corpus(name).is_empty(), "fuzz/corpus/{name} is empty");
    }
}

#[test]
fn the_spec_corpus_replays() {
    replay("spec");
}

#[test]
fn the_ami_corpus_replays() {
    replay("ami");
}

#[test]
fn the_ari_event_corpus_replays() {
    replay("ari_event");
}

#[test]
fn the_webhook_corpus_replays() {
    replay("webhook");
}

/// The properties are checked, not just "no panic": the good seeds are accepted.
#[test]
fn the_seeds_exercise_the_accepting_paths() {
    let seed = |t: &str, n: &str| {
        std::fs::read(crate::support::repo_root().join("fuzz/corpus").join(t).join(n)).expect("seed")
    };
    let loaded = asterisk_gitops::core::spec::load::load_sources(
        [("good.yaml".to_string(), "good.yaml".into(), Ok(seed("spec", "good.yaml")))],
        &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(std::path::Path::new("/nonexistent")),
    );
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.set.extensions.len(), 3);
    let mut framer = asterisk_gitops::asterisk::ami::Framer::default();
    let mut out = Vec::new();
    framer.feed(&seed("ami", "fixture-ami-reload.txt"), &mut out).expect("frames");
    // The capture ends with the Logoff answer's last line, no blank line: two whole messages, one begun.
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(framer.is_partial());
    assert_eq!(out[1].get("Message"), Some("Module Reloaded"));
    let good = seed("webhook", "github-good.txt");
    let text = String::from_utf8(good).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a body");
    let sig = head.lines().find_map(|l| l.strip_prefix("X-Hub-Signature-256: ")).expect("signed").to_string();
    let header = |n: &str| (n == "x-hub-signature-256").then(|| sig.clone());
    assert_eq!(
        asterisk_gitops::http::webhook::verify(&header, body.as_bytes(), fuzzing::WEBHOOK_SECRET),
        Ok(asterisk_gitops::http::webhook::Forge::GitHub)
    );
}
