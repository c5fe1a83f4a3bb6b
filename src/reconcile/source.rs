//! Where the desired state comes from: a directory of spec files on disk
//! ([`DirSource`], parsing again only the files whose bytes changed) or a
//! git revision (through the [`SpecRevisions`] port, which `git::GitSource`
//! implements), turned into a [`Desired`]. The daemon, the CLI and the
//! benchmarks load through here: one load path.

use crate::core::diag::{Diagnostic, Location};
use crate::core::render::SourceInfo;
use crate::core::spec::load::{FileOutcome, Source};
use crate::core::spec::{self, DesiredSet, LoadOptions, SecretPolicy};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the desired state comes from for one run.
#[derive(Clone, Default)]
pub struct Desired {
    pub set: DesiredSet,
    pub diagnostics: Vec<Diagnostic>,
    pub source: SourceInfo,
    /// The source could not be read (git remote down, branch deleted): the
    /// run changes nothing and records why.
    pub error: Option<String>,
    /// Something worth telling (a force-push) that does not stop the run.
    pub warning: Option<String>,
    /// The commit's subject line, for a git source.
    pub subject: Option<String>,
    /// A hash of everything the set was loaded from (file names and bytes,
    /// or commit and path): equal fingerprints, equal sets. `None`: unknown.
    pub fingerprint: Option<u64>,
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired")
            .field("extensions", &self.set.extensions.len())
            .field("source", &self.source.source)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The one hash of what something was made from (file names and bytes, a
/// commit and path, a rendered file, the secret files' sizes and times):
/// equal inputs, equal fingerprints. Only compared within one process,
/// never stored.
#[derive(Default)]
pub struct Fingerprint(std::collections::hash_map::DefaultHasher);

impl Fingerprint {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a part.
    pub fn add(&mut self, part: impl Hash) -> &mut Self {
        part.hash(&mut self.0);
        self
    }

    pub fn finish(&self) -> u64 {
        self.0.finish()
    }

    /// The fingerprint of one value.
    pub fn of(part: impl Hash) -> u64 {
        Fingerprint::new().add(part).finish()
    }
}

/// A fetched revision of a spec repository.
#[derive(Clone, Debug)]
pub struct Revision {
    pub commit: String,
    /// The commit message's first line.
    pub subject: String,
    /// The commit the branch pointed at before this fetch, if any.
    pub previous: Option<String>,
    /// The branch moved to a commit that does not contain the previous one (force-push).
    pub forced: bool,
}

/// A git branch the specs are read from (implemented by `git::GitSource`).
/// Blocking: called off the async runtime.
pub trait SpecRevisions: Send {
    /// How the source is shown (its URL without credentials, branch and path).
    fn name(&self) -> String;
    /// The spec path inside the tree (part of the fingerprint).
    fn spec_path(&self) -> &str;
    /// The commit the mirror holds now, if any.
    fn current(&self) -> Option<String>;
    /// Fetches the tracked branch.
    fn fetch(&mut self) -> Result<Revision, super::error::BoxError>;
    /// The spec files in `commit`'s tree.
    fn read_specs(&self, commit: &str) -> Result<Vec<Source>, super::error::BoxError>;
    /// Where `passwordFile` and `passwordEnv` may point.
    fn secrets(&self) -> &SecretPolicy;
}

/// Where each run reads the desired state from.
#[derive(Clone)]
pub enum DesiredSource {
    /// A directory of spec files, as it is on disk.
    Dir(Arc<DirSource>),
    /// A branch of a git remote: each run fetches, then reads the specs from
    /// the fetched commit's tree.
    Git(Arc<Mutex<dyn SpecRevisions>>),
}

impl std::fmt::Debug for DesiredSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DesiredSource::Dir(d) => f.debug_tuple("Dir").field(&d.path).finish(),
            DesiredSource::Git(_) => f.write_str("Git"),
        }
    }
}

impl DesiredSource {
    /// Loads the desired state (blocking work runs off the async runtime).
    pub async fn load(&self) -> Desired {
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || match this {
            DesiredSource::Dir(dir) => dir.load(),
            DesiredSource::Git(git) => {
                let mut git = git.lock().unwrap_or_else(|p| p.into_inner());
                load_git(&mut *git)
            }
        })
        .await;
        joined
            .unwrap_or_else(|e| Desired { error: Some(format!("loading the specs failed: {e}")), ..Default::default() })
    }
}

/// A spec directory, with the last load kept: when no file's name or bytes
/// changed, the next load reuses it instead of parsing again (reading and
/// hashing 10k extensions' files takes under a millisecond; parsing them
/// tens). When some files changed, only those are parsed again.
///
/// Two versions are kept (of the whole load and of each file's parse):
/// while an edit is written, the API's validation (the directory as it will
/// be), a load warming the cache during the quiet period (perhaps the file
/// as it was) and the run (as it is) can alternate between the old bytes
/// and the new, and with one version each of them parsed again what the
/// one before had just put out.
#[derive(Debug)]
pub struct DirSource {
    pub path: PathBuf,
    /// Where `passwordFile` and `passwordEnv` may point.
    pub secrets: SecretPolicy,
    /// The last loads, the newest first (at most [`KEPT`]).
    last: Mutex<Vec<(Desired, Arc<Vec<String>>)>>,
    /// Each file's content hashes and parse outcomes, by displayed name,
    /// the newest first (at most [`KEPT`] each).
    files: Mutex<ParsedFiles>,
    /// How many files this source has parsed (tests tell a cache hit by it).
    parsed: std::sync::atomic::AtomicUsize,
}

impl DirSource {
    /// A directory with the default secret policy (its `secrets/`, `EXT_*`).
    pub fn new(path: PathBuf) -> Self {
        let secrets = SecretPolicy::for_spec_dir(&path);
        Self::with_secrets(path, secrets)
    }

    pub fn with_secrets(path: PathBuf, secrets: SecretPolicy) -> Self {
        DirSource { path, secrets, last: Default::default(), files: Default::default(), parsed: Default::default() }
    }

    /// Loads the directory, reusing the last load when nothing changed and
    /// the last parse of every file whose bytes did not change.
    pub fn load(&self) -> Desired {
        self.load_with_files().0
    }

    /// [`load`](DirSource::load), and the files it read (as diagnostics
    /// show them): what the API's write-back validates an edit with, so
    /// an edit at 10k extensions parses one file, not all of them twice.
    pub fn load_with_files(&self) -> (Desired, Arc<Vec<String>>) {
        let (sources, diagnostics) = read_dir_sources(&self.path);
        self.load_from(sources, diagnostics)
    }

    /// The directory as it would load with the file `rel` (relative to
    /// it) holding `content` (`None`: removed), without touching the disk:
    /// what the API's write-back validates an edit with before writing it.
    /// The edited file's parse is kept, so the load after the file is
    /// written with those bytes (the run's) parses nothing.
    pub fn load_as_if(&self, rel: &Path, content: Option<&[u8]>) -> (Desired, Arc<Vec<String>>) {
        let (mut sources, diagnostics) = read_dir_sources(&self.path);
        let path = self.path.join(rel);
        spec::load::override_source(&mut sources, path, rel.display().to_string(), content);
        self.load_from(sources, diagnostics)
    }

    /// How many files this source has parsed since it was made.
    pub fn files_parsed(&self) -> usize {
        self.parsed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The load of `sources` as read (parsing only the files whose bytes
    /// no kept version has).
    fn load_from(&self, sources: Vec<Source>, mut diagnostics: Vec<Diagnostic>) -> (Desired, Arc<Vec<String>>) {
        // Each file's bytes are hashed once: the load's fingerprint is made of those.
        let hashes: Vec<u64> = sources.iter().map(|(_, _, content)| Fingerprint::of(content)).collect();
        let fp = fingerprint(&sources, &hashes, &diagnostics);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = last.iter().position(|(d, _)| d.fingerprint == Some(fp)) {
            let hit = last.remove(i);
            last.insert(0, hit.clone());
            return hit;
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let cached = |files: &ParsedFiles, shown: &str, h: u64| {
            files.get(shown).and_then(|v| v.iter().find(|(old, _)| *old == h).map(|(_, o)| o.clone()))
        };
        let changed: Vec<Source> = sources
            .iter()
            .zip(&hashes)
            .filter(|((shown, _, _), h)| cached(&files, shown, **h).is_none())
            .map(|(source, _)| source.clone())
            .collect();
        self.parsed.fetch_add(changed.len(), std::sync::atomic::Ordering::Relaxed);
        let mut parsed: HashMap<String, FileOutcome> = changed
            .iter()
            .map(|(shown, _, _)| shown.clone())
            .zip(spec::load::parse_sources(&changed, &self.secrets))
            .collect();
        let mut next = HashMap::with_capacity(sources.len());
        let mut outcomes = Vec::with_capacity(sources.len());
        for ((shown, _, _), h) in sources.iter().zip(hashes) {
            let outcome = match parsed.remove(shown) {
                Some(o) => Arc::new(o),
                None => cached(&files, shown, h).unwrap_or_default(),
            };
            // This version first, then the newest other one kept.
            let mut versions = vec![(h, outcome.clone())];
            if let Some(older) = files.remove(shown) {
                versions.extend(older.into_iter().filter(|(old, _)| *old != h).take(KEPT - 1));
            }
            next.insert(shown.clone(), versions);
            outcomes.push((shown.clone(), outcome));
        }
        *files = next;
        let mut loaded = spec::load::assemble(outcomes);
        diagnostics.append(&mut loaded.diagnostics);
        let d = Desired {
            set: loaded.set,
            diagnostics,
            source: SourceInfo { source: self.path.display().to_string(), revision: None },
            fingerprint: Some(fp),
            ..Default::default()
        };
        let files = Arc::new(loaded.files);
        last.insert(0, (d.clone(), files.clone()));
        last.truncate(KEPT);
        (d, files)
    }
}

/// Each file's kept versions: (content hash, parse outcome), the newest first.
type ParsedFiles = HashMap<String, Vec<(u64, Arc<FileOutcome>)>>;

/// How many versions of the load, and of each file's parse, are kept.
const KEPT: usize = 2;

fn read_dir_sources(dir: &Path) -> (Vec<Source>, Vec<Diagnostic>) {
    let (sources, mut diagnostics) = spec::load::read_paths(&[dir.to_path_buf()], &LoadOptions::for_dir(dir));
    if !dir.is_dir() {
        diagnostics.push(Diagnostic::error(
            "io-error",
            Location { file: dir.display().to_string(), line: 1, column: 1 },
            "",
            format!("the spec directory {} does not exist", dir.display()),
        ));
    }
    (sources, diagnostics)
}

/// What a load depends on: every file's name and bytes (or read error),
/// and the diagnostics of reading.
fn fingerprint(sources: &[Source], hashes: &[u64], diagnostics: &[Diagnostic]) -> u64 {
    let mut h = Fingerprint::new();
    for ((shown, _, _), content) in sources.iter().zip(hashes) {
        h.add(shown).add(content);
    }
    for d in diagnostics {
        h.add(&d.message);
    }
    h.finish()
}

/// Size and modification time of every `passwordFile` the set reads: a
/// changed secret file must re-render even when no spec file changed.
pub fn secret_files_fingerprint(set: &DesiredSet) -> u64 {
    let mut h = Fingerprint::new();
    for ext in set.extensions.iter() {
        if let spec::Secret::PasswordFile { dir, path } = &ext.secret {
            let path = dir.join(path);
            h.add(&path);
            match std::fs::metadata(&path) {
                Ok(m) => h.add((m.len(), m.modified().ok())),
                Err(e) => h.add(e.kind()),
            };
        }
    }
    h.finish()
}

/// Fetches the tracked branch and loads the specs of the fetched commit.
/// When the fetch fails, the mirror's last commit is not used either: the
/// run records the failure and changes nothing.
pub fn load_git(git: &mut dyn SpecRevisions) -> Desired {
    let source_name = git.name();
    let fetched = match git.fetch() {
        Ok(f) => f,
        Err(e) => {
            return Desired {
                error: Some(e.to_string()),
                source: SourceInfo { source: source_name, revision: git.current() },
                ..Default::default()
            };
        }
    };
    let warning = fetched.forced.then(|| {
        format!(
            "the branch was force-pushed: {} is not a descendant of {}",
            short(&fetched.commit),
            fetched.previous.as_deref().map(short).unwrap_or("?")
        )
    });
    let source = SourceInfo { source: source_name, revision: Some(fetched.commit.clone()) };
    match git.read_specs(&fetched.commit) {
        Ok(files) => {
            let loaded = spec::load::load_sources(files, git.secrets());
            Desired {
                set: loaded.set,
                diagnostics: loaded.diagnostics,
                source,
                error: None,
                warning,
                subject: Some(fetched.subject.clone()),
                fingerprint: Some(Fingerprint::of((&fetched.commit, git.spec_path()))),
            }
        }
        Err(e) => Desired { error: Some(e.to_string()), source, warning, ..Default::default() },
    }
}

fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

/// Loads a spec directory, diagnostics relative to it (no cache kept: the
/// one-shot commands).
pub fn load_dir(dir: &Path) -> Desired {
    load_dir_with(dir, &SecretPolicy::for_spec_dir(dir))
}

/// [`load_dir`] with the operator's secret policy: the daemon's
/// [`DirSource`] load, once.
pub fn load_dir_with(dir: &Path, secrets: &SecretPolicy) -> Desired {
    DirSource::with_secrets(dir.to_path_buf(), secrets.clone()).load()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(numbers: &[&str]) -> String {
        let mut s =
            String::from("defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw]}\nextensions:\n");
        for n in numbers {
            s.push_str(&format!("  - {{extension: \"{n}\", md5Cred: 0123456789abcdef0123456789abcdef}}\n"));
        }
        s
    }

    /// An edit validated as if written, then the directory loaded as it
    /// still is (a warm-up during the quiet period), then as written (the
    /// run): each version is parsed once, and every load equals a fresh one.
    #[test]
    fn an_edit_validated_before_it_is_written_is_parsed_once_however_the_loads_alternate() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), team(&["1001"])).expect("write");
        std::fs::write(dir.path().join("b.yaml"), team(&["2001"])).expect("write");
        let src = DirSource::new(dir.path().to_path_buf());
        let numbers = |d: &Desired| d.set.extensions.iter().map(|e| e.extension.clone()).collect::<Vec<_>>();
        assert_eq!(numbers(&src.load()), ["1001", "2001"]);
        assert_eq!(src.files_parsed(), 2);
        let edited = team(&["2001", "2002"]);
        let (as_if, _) = src.load_as_if(Path::new("b.yaml"), Some(edited.as_bytes()));
        assert_eq!(numbers(&as_if), ["1001", "2001", "2002"]);
        assert_eq!(src.files_parsed(), 3, "the edited file parsed once");
        assert_eq!(numbers(&src.load()), ["1001", "2001"], "the disk still holds the old file");
        assert_eq!(src.files_parsed(), 3, "the old version was parsed again");
        std::fs::write(dir.path().join("b.yaml"), &edited).expect("write");
        let written = src.load();
        assert_eq!(src.files_parsed(), 3, "the written version was parsed again");
        assert_eq!(written.set, as_if.set);
        assert_eq!(written.fingerprint, as_if.fingerprint);
        assert_eq!(written.set, load_dir(dir.path()).set);
        // A new file and a removed one, as if: neither is on the disk.
        let (added, _) = src.load_as_if(Path::new("c.yaml"), Some(team(&["3001"]).as_bytes()));
        assert_eq!(numbers(&added), ["1001", "2001", "2002", "3001"]);
        let (removed, _) = src.load_as_if(Path::new("a.yaml"), None);
        assert_eq!(numbers(&removed), ["2001", "2002"]);
        assert_eq!(numbers(&src.load()), ["1001", "2001", "2002"]);
        assert!(!dir.path().join("c.yaml").exists() && dir.path().join("a.yaml").exists());
    }

    /// Whatever changes between loads, the cached load equals a fresh one.
    #[test]
    fn a_cached_directory_load_equals_a_fresh_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = DirSource::new(dir.path().to_path_buf());
        let same = |src: &DirSource| {
            let (cached, fresh) = (src.load(), load_dir(dir.path()));
            assert_eq!(cached.set, fresh.set);
            assert_eq!(cached.diagnostics, fresh.diagnostics);
            assert_eq!(cached.fingerprint, fresh.fingerprint);
            cached.set.extensions.iter().map(|e| e.extension.clone()).collect::<Vec<_>>()
        };
        std::fs::write(dir.path().join("a.yaml"), team(&["1001", "1002"])).expect("write");
        std::fs::write(dir.path().join("b.yaml"), team(&["2001"])).expect("write");
        assert_eq!(same(&src), ["1001", "1002", "2001"]);
        assert_eq!(same(&src), ["1001", "1002", "2001"], "unchanged");
        std::fs::write(dir.path().join("b.yaml"), team(&["2001", "2002"])).expect("write");
        assert_eq!(same(&src), ["1001", "1002", "2001", "2002"], "one file changed");
        std::fs::write(dir.path().join("b.yaml"), team(&["1001"])).expect("write");
        assert_eq!(same(&src), ["1001", "1002"], "a duplicate across files: b.yaml is refused");
        assert!(src.load().diagnostics.iter().any(|d| d.code == "duplicate-extension"));
        std::fs::remove_file(dir.path().join("b.yaml")).expect("remove");
        assert_eq!(same(&src), ["1001", "1002"], "a file removed");
        std::fs::write(dir.path().join("a.yaml"), "extensions: [").expect("write");
        assert!(same(&src).is_empty(), "a broken file contributes nothing");
    }
    /// A sequence of edits, additions, deletions and renames across files:
    /// after each, the cached (incremental) load equals a fresh full load,
    /// and the extensions of the files whose bytes did not change are the
    /// very ones of the load before (shared, not parsed or copied again).
    #[test]
    fn an_incremental_load_equals_a_full_one_through_edits_additions_deletions_and_renames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = DirSource::new(dir.path().to_path_buf());
        let write = |name: &str, numbers: &[&str]| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, team(numbers)).expect("write");
        };
        let numbers = |d: &Desired| d.set.extensions.iter().map(|e| e.extension.clone()).collect::<Vec<_>>();
        let mut before = src.load();
        let step = |before: &mut Desired, what: &str, unchanged: &[&str]| {
            let (cached, fresh) = (src.load(), load_dir(dir.path()));
            assert_eq!(cached.set, fresh.set, "{what}");
            assert_eq!(cached.diagnostics, fresh.diagnostics, "{what}");
            assert_eq!(cached.fingerprint, fresh.fingerprint, "{what}");
            for n in unchanged {
                let (old, new) = (before.set.get_shared(n), cached.set.get_shared(n));
                assert!(
                    old.zip(new).is_some_and(|(a, b)| Arc::ptr_eq(a, b)),
                    "{what}: {n} was copied or parsed again, not shared"
                );
            }
            *before = cached.clone();
            numbers(&cached)
        };
        write("b.yaml", &["2001", "2002"]);
        write("a.yaml", &["1001", "1003"]);
        write("team/c.yaml", &["3001"]);
        assert_eq!(step(&mut before, "three files", &[]), ["1001", "1003", "2001", "2002", "3001"]);
        write("a.yaml", &["1001", "1002", "1003"]);
        assert_eq!(
            step(&mut before, "an entry added", &["2001", "2002", "3001"]),
            ["1001", "1002", "1003", "2001", "2002", "3001"]
        );
        std::fs::write(dir.path().join("b.yaml"), team(&["2001", "2002"]).replace("ulaw", "alaw")).expect("write");
        assert_eq!(
            step(&mut before, "a file's defaults edited", &["1001", "3001"]),
            ["1001", "1002", "1003", "2001", "2002", "3001"]
        );
        assert_eq!(before.set.get("2001").map(|e| e.codecs.clone()), Some(vec!["alaw".to_string()]));
        std::fs::rename(dir.path().join("team/c.yaml"), dir.path().join("0.yaml")).expect("rename");
        assert_eq!(
            step(&mut before, "a file renamed", &["1001", "2001"]),
            ["1001", "1002", "1003", "2001", "2002", "3001"]
        );
        assert_eq!(before.set.get("3001").map(|e| e.origin.file.clone()), Some("0.yaml".to_string()));
        write("d.yaml", &["0999", "4001"]);
        assert_eq!(
            step(&mut before, "a file added", &["1001", "2001", "3001"]),
            ["0999", "1001", "1002", "1003", "2001", "2002", "3001", "4001"]
        );
        write("a.yaml", &["1001", "1003"]);
        assert_eq!(
            step(&mut before, "an entry deleted", &["0999", "2001", "3001"]),
            ["0999", "1001", "1003", "2001", "2002", "3001", "4001"]
        );
        write("e.yaml", &["4001"]);
        assert_eq!(
            step(&mut before, "a duplicate in a new file: the new file is refused", &["0999", "4001"]),
            ["0999", "1001", "1003", "2001", "2002", "3001", "4001"]
        );
        std::fs::remove_file(dir.path().join("d.yaml")).expect("remove");
        assert_eq!(
            step(&mut before, "the first declaration's file deleted: the other now counts", &["1001"]),
            ["1001", "1003", "2001", "2002", "3001", "4001"]
        );
        std::fs::write(dir.path().join("a.yaml"), "extensions: [").expect("write");
        assert_eq!(
            step(&mut before, "a broken file contributes nothing", &["2001", "3001"]),
            ["2001", "2002", "3001", "4001"]
        );
        std::fs::remove_file(dir.path().join("a.yaml")).expect("remove");
        assert_eq!(
            step(&mut before, "the broken file deleted", &["2001", "3001", "4001"]),
            ["2001", "2002", "3001", "4001"]
        );
    }
}
