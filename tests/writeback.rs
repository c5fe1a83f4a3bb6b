//! Edits that become commits, against real repositories: plain files, a
//! local repository, and a bare "remote" over file:// with other clones
//! pushing at the same time.

use asterisk_gitops::core::spec::{ExtensionEntry, SecretPolicy, StringList};
use asterisk_gitops::git::writeback::{
    Author, EditOp, Mode, RemoteTarget, Target, WriteBack, WriteError, apply_to_cached_dir, apply_to_dir,
};
use asterisk_gitops::git::{GitSource, GitSourceConfig};
use git2::{Repository, Signature};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HAND_WRITTEN: &str = "# Sales — maintained by hand, please keep the comments\ndefaults:\n  context: from-internal\n  transport: transport-udp\n  codecs: [ulaw, alaw]\n\nextensions:\n  # the boss\n  - extension: \"1001\"\n    displayName: Boss\n    md5Cred: 0123456789abcdef0123456789abcdef\n\n  # the intern (temporary)\n  - extension: \"1002\"\n    displayName: Intern\n    md5Cred: 0123456789abcdef0123456789abcdef\n";

fn entry(number: &str, name: &str) -> ExtensionEntry {
    ExtensionEntry {
        extension: Some(number.into()),
        display_name: Some(name.into()),
        context: Some("from-internal".into()),
        transport: Some("transport-udp".into()),
        codecs: Some(StringList::Comma("ulaw,alaw".into())),
        md5_cred: Some("ffffffffffffffffffffffffffffffff".into()),
        ..Default::default()
    }
}

/// The default secret policy of a spec directory (its `secrets/`, `EXT_*`).
fn policy(spec_dir: &Path) -> SecretPolicy {
    SecretPolicy::for_spec_dir(spec_dir)
}

/// The policy for a remote target's specs: `./extensions.d/secrets`, as
/// `config::Settings` resolves it without a config file.
fn default_policy() -> SecretPolicy {
    SecretPolicy::for_spec_dir(Path::new("extensions.d"))
}

fn alice() -> Author {
    Author { name: "Alice Supervisor".into(), email: "alice@example.com".into() }
}

fn bot() -> Author {
    Author { name: "asterisk-gitops".into(), email: "asterisk-gitops@localhost".into() }
}

#[test]
fn editing_one_entry_of_a_hand_written_file_leaves_the_rest_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sales.yaml"), HAND_WRITTEN).expect("write");
    let mut changed = entry("1002", "Junior");
    changed.context = None;
    changed.transport = None;
    changed.codecs = None;
    apply_to_dir(dir.path(), &EditOp::Update("1002".into(), changed), &policy(dir.path())).expect("edits");
    let text = std::fs::read_to_string(dir.path().join("sales.yaml")).expect("read");
    let (head, tail) = HAND_WRITTEN.split_at(HAND_WRITTEN.find("  - extension: \"1002\"").expect("entry"));
    assert!(text.starts_with(head), "everything before the entry is unchanged:\n{text}");
    assert!(!tail.is_empty());
    assert!(
        text.ends_with(
            "  - extension: '1002'\n    displayName: Junior\n    md5Cred: ffffffffffffffffffffffffffffffff\n"
        ),
        "{text}"
    );

    apply_to_dir(dir.path(), &EditOp::Delete("1001".into()), &policy(dir.path())).expect("deletes");
    let text = std::fs::read_to_string(dir.path().join("sales.yaml")).expect("read");
    assert!(text.starts_with("# Sales — maintained by hand, please keep the comments\ndefaults:\n"));
    assert!(text.contains("  # the boss\n\n  # the intern (temporary)\n  - extension: '1002'"), "{text}");
}

#[test]
fn a_created_extension_gets_its_own_file_and_deleting_it_removes_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sales.yaml"), HAND_WRITTEN).expect("write");
    let changed =
        apply_to_dir(dir.path(), &EditOp::Create(entry("2001", "New Agent")), &policy(dir.path())).expect("creates");
    assert_eq!(changed, [PathBuf::from("2001.yaml")]);
    assert!(dir.path().join("2001.yaml").exists());
    assert_eq!(std::fs::read_to_string(dir.path().join("sales.yaml")).expect("read"), HAND_WRITTEN);
    apply_to_dir(dir.path(), &EditOp::Delete("2001".into()), &policy(dir.path())).expect("deletes");
    assert!(!dir.path().join("2001.yaml").exists());
}

#[test]
fn a_bulk_create_refuses_numbers_declared_in_a_valid_or_an_invalid_file_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sales.yaml"), HAND_WRITTEN).expect("write");
    // A file with an error contributes no extension to the set, but its numbers are still taken.
    let broken =
        "extensions:\n  - {extension: \"4001\", codecs: [nosuchcodec], md5Cred: 0123456789abcdef0123456789abcdef}\n";
    std::fs::write(dir.path().join("broken.yaml"), broken).expect("write");
    let bulk = |numbers: &[&str]| {
        let mut text =
            String::from("defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n");
        for n in numbers {
            text.push_str(&format!("  - {{extension: \"{n}\", md5Cred: 0123456789abcdef0123456789abcdef}}\n"));
        }
        EditOp::CreateFile {
            file: "import.yaml".into(),
            text,
            numbers: numbers.iter().map(|n| n.to_string()).collect(),
        }
    };
    for (numbers, taken) in [(&["5001", "1002"][..], "1002"), (&["5001", "4001"][..], "4001")] {
        let err = apply_to_dir(dir.path(), &bulk(numbers), &policy(dir.path())).expect_err("taken");
        assert!(
            matches!(err, WriteError::Conflict(ref m) if m.contains("already exist") && m.contains(taken) && !m.contains("5001")),
            "{err:?}"
        );
        assert!(!dir.path().join("import.yaml").exists(), "nothing written for {taken}");
    }
    let changed = apply_to_dir(dir.path(), &bulk(&["5001", "5002"]), &policy(dir.path())).expect("new numbers import");
    assert_eq!(changed, [PathBuf::from("import.yaml")]);
}

#[test]
fn an_edit_that_would_not_validate_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sales.yaml"), HAND_WRITTEN).expect("write");
    let dup = apply_to_dir(dir.path(), &EditOp::Create(entry("1001", "Twin")), &policy(dir.path()));
    assert!(matches!(dup, Err(WriteError::Conflict(ref m)) if m.contains("1001 already exists")), "{dup:?}");
    let mut bad = entry("1002", "Intern");
    bad.codecs = Some(StringList::Comma("ulaw,nosuchcodec".into()));
    match apply_to_dir(dir.path(), &EditOp::Update("1002".into(), bad), &policy(dir.path())) {
        Err(WriteError::Invalid(diags)) => {
            assert!(diags.iter().any(|d| d.code == "unknown-codec" && d.location.file == "sales.yaml"), "{diags:?}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(dir.path().join("sales.yaml")).expect("read"), HAND_WRITTEN);
    assert!(matches!(
        apply_to_dir(dir.path(), &EditOp::Delete("9999".into()), &policy(dir.path())),
        Err(WriteError::NotFound(_))
    ));
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 1, "no stray files: {names:?}");
}

/// A bare remote seeded with the hand-written file, and a helper to make
/// other clones that push behind our back.
struct Remote {
    dir: tempfile::TempDir,
    bare: PathBuf,
}

impl Remote {
    fn new() -> Remote {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("pbx.git");
        Repository::init_bare(&bare).expect("bare");
        let r = Remote { dir, bare };
        let seed = r.clone_to("seed");
        write_commit_push(&seed, "extensions.d/sales.yaml", HAND_WRITTEN, "Seed");
        r
    }

    fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    fn clone_to(&self, name: &str) -> Repository {
        let path = self.dir.path().join(name);
        match git2::build::RepoBuilder::new().branch("main").clone(&self.url(), &path) {
            Ok(r) => r,
            Err(_) => {
                // The very first clone of an empty remote: start a repository on main.
                let r = Repository::init(&path).expect("init");
                r.remote("origin", &self.url()).expect("remote");
                r.set_head("refs/heads/main").expect("head");
                r
            }
        }
    }

    fn target(&self, mode: Mode) -> RemoteTarget {
        RemoteTarget {
            url: self.url(),
            branch: "main".into(),
            path: "extensions.d".into(),
            work_dir: self.dir.path().join(format!("work-{mode:?}")),
            mode,
            committer: bot(),
            token: None,
            ssh_key: None,
            before_push: None,
        }
    }

    /// The file as the remote's `branch` has it.
    fn file_at(&self, branch: &str, path: &str) -> Option<String> {
        let repo = Repository::open_bare(&self.bare).expect("bare");
        let commit = repo.find_reference(&format!("refs/heads/{branch}")).ok()?.peel_to_commit().ok()?;
        let entry = commit.tree().ok()?.get_path(Path::new(path)).ok()?;
        let blob = repo.find_blob(entry.id()).ok()?;
        Some(String::from_utf8_lossy(blob.content()).into_owned())
    }

    fn log(&self, branch: &str) -> Vec<(String, String)> {
        let repo = Repository::open_bare(&self.bare).expect("bare");
        let mut walk = repo.revwalk().expect("walk");
        walk.push_ref(&format!("refs/heads/{branch}")).expect("ref");
        walk.flatten()
            .filter_map(|oid| repo.find_commit(oid).ok())
            .map(|c| (c.summary().unwrap_or("").to_string(), c.author().name().unwrap_or("").to_string()))
            .collect()
    }
}

fn write_commit_push(repo: &Repository, path: &str, text: &str, message: &str) {
    let root = repo.workdir().expect("workdir");
    let file = root.join(path);
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, text).expect("write");
    let mut index = repo.index().expect("index");
    index.add_path(Path::new(path)).expect("add");
    index.write().expect("index");
    let tree = repo.find_tree(index.write_tree().expect("tree")).expect("tree");
    let sig = Signature::now("Bob Admin", "bob@example.com").expect("sig");
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).expect("commit");
    let mut origin = repo.find_remote("origin").expect("origin");
    origin.push(&["HEAD:refs/heads/main"], None).expect("push");
}

#[test]
fn direct_mode_commits_as_the_user_and_pushes_to_the_branch() {
    let remote = Remote::new();
    let wb = WriteBack::new(Target::Remote(remote.target(Mode::Direct)), default_policy());
    let done = wb.apply(&EditOp::Create(entry("2001", "New Agent")), &alice()).expect("pushed");
    assert_eq!(done.branch.as_deref(), Some("main"));
    assert_eq!(done.compare_url, None);
    let log = remote.log("main");
    assert_eq!(log[0], ("Add extension 2001 (New Agent)".to_string(), "Alice Supervisor".to_string()));
    assert!(remote.file_at("main", "extensions.d/2001.yaml").is_some_and(|t| t.contains("displayName: New Agent")));
    assert_eq!(remote.file_at("main", "extensions.d/sales.yaml").as_deref(), Some(HAND_WRITTEN));
}

#[test]
fn a_push_behind_our_back_is_fetched_and_the_edit_reapplied() {
    let remote = Remote::new();
    let wb = WriteBack::new(Target::Remote(remote.target(Mode::Direct)), default_policy());
    wb.apply(&EditOp::Create(entry("2001", "First")), &alice()).expect("pushed");
    // Bob edits another file from his own clone and pushes first.
    let bob = remote.clone_to("bob");
    write_commit_push(&bob, "extensions.d/other.yaml", "extensions: []\n", "Bob's change");
    // Our working clone is now behind; the edit still lands, on top of Bob's.
    wb.apply(&EditOp::Update("1002".into(), entry("1002", "Promoted")), &alice()).expect("pushed after retry");
    let log: Vec<String> = remote.log("main").into_iter().map(|(s, _)| s).collect();
    assert_eq!(log[..3], ["Update extension 1002", "Bob's change", "Add extension 2001 (First)"]);

    // Now Bob pushes between our fetch and our push: the push is rejected
    // as non-fast-forward, and the edit is re-applied on Bob's commit.
    let bob_dir = remote.dir.path().join("bob");
    let pushed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut target = remote.target(Mode::Direct);
    let flag = pushed.clone();
    target.before_push = Some(Arc::new(move || {
        if !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let bob = Repository::open(&bob_dir).expect("bob's clone");
            let mut origin = bob.find_remote("origin").expect("origin");
            origin.fetch(&["+refs/heads/main:refs/remotes/origin/main"], None, None).expect("fetch");
            let head = bob.find_reference("refs/remotes/origin/main").and_then(|r| r.peel_to_commit()).expect("head");
            bob.reset(head.as_object(), git2::ResetType::Hard, None).expect("reset");
            write_commit_push(&bob, "extensions.d/racing.yaml", "extensions: []\n", "Bob races us");
        }
    }));
    let wb = WriteBack::new(Target::Remote(target), default_policy());
    wb.apply(&EditOp::Delete("1001".into()), &alice()).expect("pushed after a rejected push");
    let log: Vec<String> = remote.log("main").into_iter().map(|(s, _)| s).collect();
    assert_eq!(log[..2], ["Delete extension 1001", "Bob races us"]);
    assert!(remote.file_at("main", "extensions.d/racing.yaml").is_some());
    assert!(
        remote
            .file_at("main", "extensions.d/sales.yaml")
            .is_some_and(|t| t.contains("Promoted") && t.contains("# the boss"))
    );
    // A file:// branch is moved only if it is still where the edit started
    // (libgit2's own file:// push sets it by force after its check); the
    // staging refs that carry the objects are gone again.
    let bare = Repository::open(&remote.bare).expect("the remote");
    let staging: Vec<String> = bare
        .references_glob("refs/asterisk-gitops/*")
        .expect("refs")
        .filter_map(|r| r.ok().and_then(|r| r.name().map(str::to_string)))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");
}

#[test]
fn a_true_conflict_is_reported_and_nothing_is_lost() {
    let remote = Remote::new();
    let wb = WriteBack::new(Target::Remote(remote.target(Mode::Direct)), default_policy());
    // Bob creates 3001 by hand; our API request to create 3001 must not clobber it.
    let bob = remote.clone_to("bob");
    let mut bobs = String::from("extensions:\n");
    bobs.push_str("  - {extension: \"3001\", displayName: Bobs, context: c, transport: t, codecs: [ulaw], md5Cred: 0123456789abcdef0123456789abcdef}\n");
    write_commit_push(&bob, "extensions.d/bob.yaml", &bobs, "Bob adds 3001");
    let err = wb.apply(&EditOp::Create(entry("3001", "Mine")), &alice()).expect_err("conflict");
    assert!(matches!(err, WriteError::Conflict(ref m) if m.contains("3001 already exists")), "{err:?}");
    assert_eq!(remote.file_at("main", "extensions.d/bob.yaml").as_deref(), Some(bobs.as_str()));
    assert_eq!(remote.log("main")[0].0, "Bob adds 3001");
}

#[test]
fn review_mode_pushes_a_branch_and_leaves_main_alone() {
    let remote = Remote::new();
    let mut target = remote.target(Mode::Review);
    target.url = remote.url();
    let wb = WriteBack::new(Target::Remote(target), default_policy());
    let done = wb.apply(&EditOp::Delete("1001".into()), &alice()).expect("pushed");
    let branch = done.branch.expect("a review branch");
    assert!(branch.starts_with("asterisk-gitops/1001-"), "{branch}");
    assert_eq!(remote.file_at("main", "extensions.d/sales.yaml").as_deref(), Some(HAND_WRITTEN));
    let on_branch = remote.file_at(&branch, "extensions.d/sales.yaml").expect("file on the branch");
    assert!(!on_branch.contains("\"1001\"") && on_branch.contains("# the boss"), "{on_branch}");
    assert_eq!(done.compare_url, None, "file:// is no known forge");
}

#[test]
fn fifty_concurrent_creates_all_become_commits() {
    let remote = Remote::new();
    let wb = Arc::new(WriteBack::new(Target::Remote(remote.target(Mode::Direct)), default_policy()));
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let wb = wb.clone();
            std::thread::spawn(move || wb.apply(&EditOp::Create(entry(&format!("{}", 5000 + i), "Agent")), &alice()))
        })
        .collect();
    for h in handles {
        h.join().expect("thread").expect("each create lands");
    }
    let log = remote.log("main");
    assert_eq!(log.len(), 51, "seed + 50 creates");
    for i in 0..50 {
        let path = format!("extensions.d/{}.yaml", 5000 + i);
        assert!(remote.file_at("main", &path).is_some(), "{path} is on main");
    }
}

#[test]
fn a_spec_dir_in_a_local_repository_gets_local_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repository::init(dir.path()).expect("init");
    std::fs::create_dir(dir.path().join("extensions.d")).expect("mkdir");
    std::fs::write(dir.path().join("extensions.d/sales.yaml"), HAND_WRITTEN).expect("write");
    let wb = WriteBack::new(Target::Dir(dir.path().join("extensions.d")), policy(&dir.path().join("extensions.d")));
    let done = wb.apply(&EditOp::Create(entry("2002", "Local")), &alice()).expect("commits");
    assert!(!done.commit.is_empty());
    let head = repo.head().expect("head").peel_to_commit().expect("commit");
    assert_eq!(head.summary(), Some("Add extension 2002 (Local)"));
    assert!(head.tree().expect("tree").get_path(Path::new("extensions.d/2002.yaml")).is_ok());
}

/// A refused edit is checked before anything is written: the file is not
/// replaced and put back (a watcher, or a reader, would see the invalid
/// version for a moment), it is never touched, through fresh loads or
/// through the daemon's cache.
#[test]
fn a_refused_edit_never_writes_the_file_even_for_a_moment() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sales.yaml");
    std::fs::write(&file, HAND_WRITTEN).expect("write");
    let stamp = || {
        let m = std::fs::metadata(&file).expect("stat");
        (m.ino(), m.mtime(), m.mtime_nsec(), m.ctime_nsec())
    };
    let before = stamp();
    let mut bad = entry("1002", "Intern");
    bad.codecs = Some(StringList::Comma("ulaw,nosuchcodec".into()));
    let fresh = apply_to_dir(dir.path(), &EditOp::Update("1002".into(), bad.clone()), &policy(dir.path()));
    assert!(matches!(fresh, Err(WriteError::Invalid(_))), "{fresh:?}");
    assert_eq!(stamp(), before, "the refused edit replaced the file (fresh loads)");
    let cache = asterisk_gitops::reconcile::DirSource::with_secrets(dir.path().to_path_buf(), policy(dir.path()));
    let wb = WriteBack::new(Target::Dir(dir.path().to_path_buf()), policy(dir.path())).with_cache(Arc::new(cache));
    let called = std::sync::atomic::AtomicBool::new(false);
    let cached = wb.apply_then(&EditOp::Update("1002".into(), bad), &alice(), &|| {
        called.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert!(matches!(cached, Err(WriteError::Invalid(_))), "{cached:?}");
    assert_eq!(stamp(), before, "the refused edit replaced the file (the daemon's cache)");
    assert!(!called.load(std::sync::atomic::Ordering::SeqCst), "a refused edit asked for a run");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), HAND_WRITTEN);
}

/// The API asks for its run from `apply_then`'s callback: by then the
/// edited file is on disk (what the run reads), and the local commit is
/// not made yet (it is made while the run goes).
#[test]
fn the_run_is_asked_for_once_the_file_is_written_before_the_local_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repository::init(dir.path()).expect("init");
    let specs = dir.path().join("extensions.d");
    std::fs::create_dir(&specs).expect("mkdir");
    std::fs::write(specs.join("sales.yaml"), HAND_WRITTEN).expect("write");
    let mut index = repo.index().expect("index");
    index.add_path(Path::new("extensions.d/sales.yaml")).expect("add");
    let tree = repo.find_tree(index.write_tree().expect("tree")).expect("tree");
    let sig = Signature::now("Bob Admin", "bob@example.com").expect("sig");
    let seed = repo.commit(Some("HEAD"), &sig, &sig, "seed", &tree, &[]).expect("commit");
    let cache = Arc::new(asterisk_gitops::reconcile::DirSource::with_secrets(specs.clone(), policy(&specs)));
    let wb = WriteBack::new(Target::Dir(specs.clone()), policy(&specs)).with_cache(cache.clone());
    let seen = std::sync::Mutex::new(None);
    let done = wb
        .apply_then(&EditOp::Update("1002".into(), entry("1002", "Junior")), &alice(), &|| {
            let text = std::fs::read_to_string(specs.join("sales.yaml")).expect("read");
            let head = repo.head().expect("head").peel_to_commit().expect("commit").id();
            let parsed = cache.files_parsed();
            let loaded = cache.load();
            *seen.lock().expect("lock") = Some((
                text.contains("Junior"),
                head,
                loaded.set.get("1002").and_then(|e| e.display_name.clone()),
                cache.files_parsed() - parsed,
            ));
        })
        .expect("commits");
    let (edited, head, name, parsed) = seen.lock().expect("lock").take().expect("the callback was called");
    assert!(edited, "the file did not hold the edit when the run was asked for");
    assert_eq!(head, seed, "the commit was made before the run was asked for");
    assert_eq!(name.as_deref(), Some("Junior"), "the run's load did not see the edit");
    assert_eq!(parsed, 0, "the run's load parsed the edited file again: the validation's parse was not kept");
    let head = repo.head().expect("head").peel_to_commit().expect("commit");
    assert_eq!(head.id().to_string(), done.commit);
    assert_eq!(head.summary(), Some("Update extension 1002"));
}

/// Through the daemon's cached spec directory (what the API uses with a
/// directory source), every edit gives what it gives through fresh loads:
/// the same answers, the same files, and a cache that then loads what a
/// fresh load of the directory would.
#[test]
fn edits_through_the_daemons_cached_directory_match_edits_through_fresh_loads() {
    let (fresh, cached) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    for d in [&fresh, &cached] {
        std::fs::write(d.path().join("sales.yaml"), HAND_WRITTEN).expect("write");
    }
    let cache = asterisk_gitops::reconcile::DirSource::with_secrets(cached.path().to_path_buf(), policy(cached.path()));
    let _ = cache.load();
    let mut bad = entry("1002", "Intern");
    bad.codecs = Some(StringList::Comma("ulaw,nosuchcodec".into()));
    let ops = [
        EditOp::Update("1002".into(), entry("1002", "Junior")),
        EditOp::Create(entry("1001", "Twin")),
        EditOp::Update("1002".into(), bad),
        EditOp::Create(entry("2001", "New Agent")),
        EditOp::Update("2001".into(), entry("2001", "Renamed")),
        EditOp::Delete("1001".into()),
        EditOp::Delete("2001".into()),
        EditOp::Delete("9999".into()),
    ];
    for op in &ops {
        let a = apply_to_dir(fresh.path(), op, &policy(fresh.path()));
        let b = apply_to_cached_dir(&cache, op);
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "{}: the same answer", op.summary());
        for f in ["sales.yaml", "2001.yaml"] {
            assert_eq!(
                std::fs::read_to_string(fresh.path().join(f)).ok(),
                std::fs::read_to_string(cached.path().join(f)).ok(),
                "{}: {f}",
                op.summary()
            );
        }
        let (now, again) =
            (cache.load(), asterisk_gitops::reconcile::load_dir_with(cached.path(), &policy(cached.path())));
        assert_eq!(now.set, again.set, "{}: the cache loads what is on disk", op.summary());
        assert_eq!(now.diagnostics, again.diagnostics, "{}", op.summary());
    }
    assert!(cache.load().set.get("1002").is_some_and(|e| e.display_name.as_deref() == Some("Junior")));
}

/// The soak's refused writes: libgit2's file:// push lists the remote's refs
/// and then resolves each, so a ref another writer deletes in between failed
/// the push with "reference '…' not found" (a 503 that changed nothing).
/// Here another writer creates and deletes staging refs on the remote the
/// whole time; every edit must still land.
#[test]
fn refs_deleted_on_the_remote_while_pushing_do_not_fail_the_edit() {
    let remote = Remote::new();
    let wb = WriteBack::new(Target::Remote(remote.target(Mode::Direct)), default_policy());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (bare, stop) = (remote.bare.clone(), stop.clone());
        std::thread::spawn(move || {
            let repo = Repository::open_bare(&bare).expect("remote");
            let head = repo.find_reference("refs/heads/main").and_then(|r| r.peel_to_commit()).expect("head").id();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut r) = repo.reference(&format!("refs/other-writer/push/{n}"), head, true, "stage") {
                    let _ = r.delete();
                }
                n += 1;
            }
            n
        })
    };
    let mut failures = Vec::new();
    for i in 0..60 {
        if let Err(e) = wb.apply(&EditOp::Create(entry(&format!("{}", 6000 + i), "Agent")), &alice()) {
            failures.push(format!("{}: {e}", 6000 + i));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let churned = churn.join().expect("churn");
    assert!(churned > 100, "the remote's refs hardly changed ({churned}): the test proves nothing");
    assert!(failures.is_empty(), "{} of 60 edits failed, e.g. {}", failures.len(), failures[0]);
    for i in 0..60 {
        let path = format!("extensions.d/{}.yaml", 6000 + i);
        assert!(remote.file_at("main", &path).is_some(), "{path} is on main");
    }
}

/// libgit2 writes one pack per push to a file:// remote and does no
/// housekeeping, so after each push the write-back merges the remote's small
/// packs as a git host would (the soak's remote had 3,000 packs after 30
/// minutes, and every fetch and push slowed with them). Another reader
/// fetching the whole time never fails, and every edit is on the branch.
#[test]
fn pushes_to_a_file_remote_keep_its_packs_few_while_others_fetch_it() {
    let remote = Remote::new();
    let wb = WriteBack::new(Target::Remote(remote.target(Mode::Direct)), default_policy());
    let small_packs = |bare: &Path| {
        std::fs::read_dir(bare.join("objects/pack"))
            .expect("pack dir")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count()
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The daemon's own mirror is the other reader: it fetches the remote
    // and reads every spec file of what it fetched, the whole time.
    let reader = {
        let (url, dir, stop) = (remote.url(), remote.dir.path().join("mirror.git"), stop.clone());
        std::thread::spawn(move || {
            let mut mirror = GitSource::open(GitSourceConfig {
                url,
                branch: "main".into(),
                path: "extensions.d".into(),
                mirror_dir: dir,
                token: None,
                ssh_key: None,
            })
            .expect("the mirror opens");
            let (mut fetches, mut failures) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match mirror.fetch().map_err(|e| e.to_string()).and_then(|f| {
                    let files = mirror.read_specs(&f.commit).map_err(|e| e.to_string())?;
                    if files.is_empty() { Err(format!("no spec files at {}", f.commit)) } else { Ok(()) }
                }) {
                    Ok(()) => fetches += 1,
                    Err(e) => failures.push(e),
                }
            }
            (fetches, failures)
        })
    };
    let mut most = 0;
    for i in 0..60 {
        wb.apply(&EditOp::Create(entry(&format!("{}", 7000 + i), "Agent")), &alice()).expect("each create lands");
        most = most.max(small_packs(&remote.bare));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (fetches, failures) = reader.join().expect("reader");
    // One pack per push without the merge: 61 here.
    assert!(
        most <= asterisk_gitops::git::MAX_PACKS + 2,
        "{most} packs in the remote at the most (the seed's, then one per push until merged)"
    );
    assert!(fetches > 10, "the reader fetched only {fetches} times: the test proves nothing");
    assert!(failures.is_empty(), "{} of the reader's fetches failed, e.g. {}", failures.len(), failures[0]);
    for i in 0..60 {
        let path = format!("extensions.d/{}.yaml", 7000 + i);
        assert!(remote.file_at("main", &path).is_some(), "{path} is on main");
    }
    assert_eq!(remote.log("main").len(), 61, "seed + 60 creates");
}
