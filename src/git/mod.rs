//! Git as the source of truth: a local mirror of one branch of a remote,
//! fetched on demand, and spec files read straight out of a commit's tree.
//!
//! Architecture invariant: specs are read from the tree of the fetched
//! commit itself, never from a working tree, so a half-updated checkout can
//! never be read. The mirror is a bare repository under the state directory.
//!
//! Everything here is blocking (git2); async callers use `spawn_blocking`.

pub mod writeback;

use crate::secret::SecretString;
use git2::{Cred, CredentialType, FetchOptions, FetchPrune, Oid, RemoteCallbacks, Repository};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open the local mirror at {path}: {message}")]
    Mirror { path: PathBuf, message: String },
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("branch {branch} does not exist on {url} (deleted?)")]
    BranchNotFound { url: String, branch: String },
    #[error("path {path} does not exist in commit {commit}")]
    PathNotFound { path: String, commit: String },
    #[error("cannot read commit {commit}: {message}")]
    Read { commit: String, message: String },
}

/// Where the specs live.
#[derive(Clone, Debug)]
pub struct GitSourceConfig {
    /// `file://`, `https://` or `ssh://` (or scp-like `git@host:repo`).
    pub url: String,
    pub branch: String,
    /// The directory inside the repository that holds the spec files; empty for the root.
    pub path: String,
    /// The bare mirror, under the state directory.
    pub mirror_dir: PathBuf,
    /// A token for https remotes (sent as the password).
    pub token: Option<SecretString>,
    /// A private key file for ssh remotes.
    pub ssh_key: Option<PathBuf>,
}

/// The credential callback for a remote, shared by the mirror's fetches and
/// the write-back's clone, fetches and pushes: the ssh key when the remote
/// asks for one, the token (as the password, user `x-access-token` unless
/// the URL names one) for https, else git's defaults. libgit2 asks again
/// after a rejected credential; the fourth ask gives up rather than loop.
pub fn credentials(token: Option<SecretString>, ssh_key: Option<PathBuf>) -> RemoteCallbacks<'static> {
    let mut callbacks = RemoteCallbacks::new();
    let mut tries = 0;
    callbacks.credentials(move |_url, username, allowed| {
        tries += 1;
        if tries > 3 {
            return Err(git2::Error::from_str("credentials rejected"));
        }
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = &ssh_key
        {
            return Cred::ssh_key(username.unwrap_or("git"), None, key, None);
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
            && let Some(token) = &token
        {
            return Cred::userpass_plaintext(username.unwrap_or("x-access-token"), token.expose());
        }
        Cred::default()
    });
    callbacks
}

/// A fetched commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub commit: String,
    /// The commit message's first line.
    pub subject: String,
    /// The commit the branch pointed at before this fetch, if any.
    pub previous: Option<String>,
    /// The branch moved to a commit that does not contain the previous one (force-push).
    pub forced: bool,
}

/// Small pack files a repository may collect before [`compact`] merges them.
pub const MAX_PACKS: usize = 16;

/// How [`compact`] bounds its work; [`Compaction::DEFAULT`] in the daemon.
#[derive(Clone, Copy, Debug)]
pub struct Compaction {
    /// Merge once more packs than this are small (under half of `max_merge`).
    pub max_packs: usize,
    /// Merge once more loose objects than this have collected.
    pub max_loose: usize,
    /// The most objects one merge writes: its memory and time are bounded
    /// by this, not by the history's size.
    pub max_merge: usize,
}

impl Compaction {
    /// About 1.5 KB of libgit2 heap per merged object (heaptrack): a merge
    /// peaks near 3 MB at most; a pack is left alone once it holds 1,000
    /// objects, about 250 one-file commits. (With 10,000 the soak's RSS rose
    /// in steps as the merges grew: glibc keeps a merge's high-water mark.)
    pub const DEFAULT: Compaction = Compaction { max_packs: MAX_PACKS, max_loose: 1024, max_merge: 2_000 };
}

/// Merges a repository's small pack files and loose objects into one pack
/// once there are more than [`MAX_PACKS`] such packs (or many loose objects),
/// the smallest first, never more than `max_merge` objects at a time; packs
/// that have grown past half of that are left alone (like `git repack
/// --geometric` with a ceiling). Every fetch writes one more pack, and
/// libgit2 keeps each pack it has read open, so a mirror fetched on every
/// webhook and edit held hundreds of file descriptors after a few minutes
/// (the soak test, `examples/soak.rs`, found it) and looked objects up in
/// ever more packs. Merging everything reachable instead (as this did first)
/// costs memory in proportion to the whole history on every merge, and
/// glibc keeps that high-water mark: the daemon's RSS rose with every commit
/// (the soak again, and heaptrack). Objects are merged as they are, so
/// nothing is lost; unreachable ones stay. A `Repository` opened before must
/// be reopened. Returns whether it merged.
pub fn compact(dir: &Path) -> Result<bool, git2::Error> {
    compact_with(dir, Compaction::DEFAULT)
}

/// [`compact`] with other bounds (the tests use small ones).
pub fn compact_with(dir: &Path, limits: Compaction) -> Result<bool, git2::Error> {
    let repo = Repository::open(dir)?;
    let objects = repo.path().join("objects");
    let pack_dir = objects.join("pack");
    let mut packs: Vec<(usize, PathBuf)> = std::fs::read_dir(&pack_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pack") && !p.with_extension("keep").exists())
                .filter_map(|p| Some((pack_object_count(&p.with_extension("idx"))?, p)))
                .collect()
        })
        .unwrap_or_default();
    packs.sort();
    let small = packs.iter().filter(|(n, _)| *n < limits.max_merge / 2).count();
    let loose = loose_objects(&objects, limits.max_loose + 1);
    if small <= limits.max_packs && loose.len() <= limits.max_loose {
        return Ok(false);
    }
    let loose = loose_objects(&objects, limits.max_merge);
    let mut total = loose.len();
    let mut merged = Vec::new();
    let mut ids = Vec::new();
    for (n, pack) in &packs {
        // Sorted by size: from here on every pack is full (left alone) or
        // too big to fit in this merge.
        if *n >= limits.max_merge / 2 || total + n > limits.max_merge {
            break;
        }
        // A pack whose index cannot be read is left as it is, never removed.
        let Some(listed) = pack_objects(&pack.with_extension("idx")) else { continue };
        total += n;
        ids.extend(listed);
        merged.push(pack.clone());
    }
    if loose.is_empty() && merged.len() < 2 {
        return Ok(false);
    }
    let mut builder = repo.packbuilder()?;
    for oid in ids.into_iter().chain(loose.iter().map(|(oid, _)| *oid)) {
        builder.insert_object(oid, None)?;
    }
    builder.write(&pack_dir, 0)?;
    let kept = builder.name().map(|n| format!("pack-{n}.pack"));
    for pack in merged {
        if pack.file_name().and_then(|n| n.to_str()) == kept.as_deref() {
            continue;
        }
        for ext in ["pack", "idx", "rev", "promisor", "mtimes"] {
            let _ = std::fs::remove_file(pack.with_extension(ext));
        }
    }
    for (_, path) in loose {
        let _ = std::fs::remove_file(path);
    }
    Ok(true)
}

/// The number of objects a pack index (version 2) lists: the last entry of
/// its fan-out table. `None` for anything else (left alone).
fn pack_object_count(idx: &Path) -> Option<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(idx).ok()?;
    let mut head = [0u8; 8];
    f.read_exact(&mut head).ok()?;
    if head != [0xff, b't', b'O', b'c', 0, 0, 0, 2] {
        return None;
    }
    f.seek(SeekFrom::Start(8 + 255 * 4)).ok()?;
    let mut n = [0u8; 4];
    f.read_exact(&mut n).ok()?;
    Some(u32::from_be_bytes(n) as usize)
}

/// The object ids a pack index (version 2, SHA-1) lists.
fn pack_objects(idx: &Path) -> Option<Vec<Oid>> {
    let data = std::fs::read(idx).ok()?;
    let count = pack_object_count(idx)?;
    let ids = data.get(8 + 256 * 4..8 + 256 * 4 + count.checked_mul(20)?)?;
    ids.chunks_exact(20).map(|id| Oid::from_bytes(id).ok()).collect()
}

/// Up to `limit` loose objects (`objects/xx/yyyy…`), with their files.
fn loose_objects(objects: &Path, limit: usize) -> Vec<(Oid, PathBuf)> {
    let mut out = Vec::new();
    for byte in 0..=255u8 {
        let dir = objects.join(format!("{byte:02x}"));
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if out.len() >= limit {
                return out;
            }
            let name = entry.file_name();
            let Some(rest) = name.to_str() else { continue };
            if let Ok(oid) = Oid::from_str(&format!("{byte:02x}{rest}"))
                && rest.len() == 38
            {
                out.push((oid, entry.path()));
            }
        }
    }
    out
}

/// Fetches, trying again (up to [`VANISHED_REF_RETRIES`] times) when a ref vanished while the
/// remote's refs were read. libgit2's file:// transport lists every ref of
/// the remote and then resolves each, so another writer deleting a ref in
/// between (the write-back's and the soak test's short-lived staging refs)
/// failed the whole fetch with "reference '…' not found": a failed run, or
/// a 503 for an API write (the soak found both).
pub(crate) fn fetch_retrying(
    remote: &mut git2::Remote<'_>,
    refspecs: &[&str],
    options: &mut FetchOptions<'_>,
) -> Result<(), git2::Error> {
    let mut tries = 0;
    loop {
        match remote.fetch(refspecs, Some(options), None) {
            Err(e) if tries < VANISHED_REF_RETRIES && ref_vanished(&e) => {
                tracing::debug!(error = %e.message(), "a ref vanished while fetching; fetching again");
                tries += 1;
            }
            other => return other,
        }
    }
}

/// How many times a fetch or a push is tried again after a ref vanished.
pub(crate) const VANISHED_REF_RETRIES: usize = 8;

/// Whether `e` is libgit2's "reference '…' not found" for a ref of the
/// remote that another writer deleted while this fetch or push listed them
/// (see [`fetch_retrying`]): worth trying again, nothing was changed.
pub(crate) fn ref_vanished(e: &git2::Error) -> bool {
    e.class() == git2::ErrorClass::Reference
        // libgit2 reports it as a generic error of the reference class.
        && (e.code() == git2::ErrorCode::NotFound || e.message().ends_with("not found"))
}

/// A local bare mirror of one remote branch.
pub struct GitSource {
    cfg: GitSourceConfig,
    repo: Repository,
    /// Where `passwordFile` and `passwordEnv` of the fetched specs may point.
    secrets: crate::core::spec::SecretPolicy,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource").field("url", &self.cfg.url).field("branch", &self.cfg.branch).finish()
    }
}

/// Makes `dir` (and its parent, the state directory's `git/`) 0700.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some(parent) = dir.parent().filter(|p| p.file_name().is_some_and(|n| n == "git")) {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl GitSource {
    /// Opens the mirror, creating it (bare, empty) on first use.
    pub fn open(cfg: GitSourceConfig) -> Result<Self, GitError> {
        // libgit2 keeps every commit and tree it parses in a per-repository
        // cache that is only trimmed past 256 MB; the mirror is open for the
        // daemon's whole life and reads each new revision once, so the cache
        // only grows (a step each time its table doubles). Nothing here reads
        // an object twice in a way that matters: no cache (process-wide).
        git2::opts::enable_caching(false);
        let mirror =
            |e: git2::Error| GitError::Mirror { path: cfg.mirror_dir.clone(), message: e.message().to_string() };
        let repo = match Repository::open_bare(&cfg.mirror_dir) {
            Ok(r) => r,
            Err(_) => {
                std::fs::create_dir_all(&cfg.mirror_dir)
                    .map_err(|e| GitError::Mirror { path: cfg.mirror_dir.clone(), message: e.to_string() })?;
                Repository::init_bare(&cfg.mirror_dir).map_err(mirror)?
            }
        };
        match repo.find_remote("origin") {
            Ok(r) if r.url() == Some(cfg.url.as_str()) => {}
            Ok(_) => repo.remote_set_url("origin", &cfg.url).map_err(mirror)?,
            Err(_) => {
                repo.remote("origin", &cfg.url).map_err(mirror)?;
            }
        }
        // The mirror holds the specs (and whatever history the remote has):
        // only the daemon's user reads it.
        private_dir(&cfg.mirror_dir)
            .map_err(|e| GitError::Mirror { path: cfg.mirror_dir.clone(), message: e.to_string() })?;
        Ok(GitSource { cfg, repo, secrets: crate::core::spec::SecretPolicy::for_spec_dir(Path::new(".")) })
    }

    pub fn config(&self) -> &GitSourceConfig {
        &self.cfg
    }

    /// Sets the secret policy the fetched specs are loaded with (default:
    /// `./secrets`, `EXT_*`).
    pub fn with_secrets(mut self, secrets: crate::core::spec::SecretPolicy) -> Self {
        self.secrets = secrets;
        self
    }

    pub fn secrets(&self) -> &crate::core::spec::SecretPolicy {
        &self.secrets
    }

    fn tracking_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.cfg.branch)
    }

    /// The commit the mirror last fetched, if any.
    pub fn current(&self) -> Option<String> {
        self.repo.refname_to_id(&self.tracking_ref()).ok().map(|o| o.to_string())
    }

    /// Fetches the branch. A deleted branch or an unreachable remote is an
    /// error and leaves the mirror's last commit in place.
    pub fn fetch(&mut self) -> Result<Fetched, GitError> {
        let fetched = self.fetch_branch()?;
        // Every fetch leaves a pack, and the open repository holds each one
        // it read open: merge them now and then, and reopen.
        match compact(&self.cfg.mirror_dir) {
            Ok(true) => match Repository::open_bare(&self.cfg.mirror_dir) {
                Ok(repo) => self.repo = repo,
                Err(e) => tracing::warn!(error = %e.message(), "cannot reopen the git mirror after compacting it"),
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e.message(), "cannot compact the git mirror's packs"),
        }
        Ok(fetched)
    }

    fn fetch_branch(&self) -> Result<Fetched, GitError> {
        let previous = self.repo.refname_to_id(&self.tracking_ref()).ok();
        let mut remote = self.repo.find_remote("origin").map_err(|e| self.fetch_error(e))?;
        let callbacks = credentials(self.cfg.token.clone(), self.cfg.ssh_key.clone());
        let mut options = FetchOptions::new();
        options.remote_callbacks(callbacks);
        options.prune(FetchPrune::On);
        let refspec = format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.cfg.branch);
        fetch_retrying(&mut remote, &[refspec.as_str()], &mut options).map_err(|e| self.fetch_error(e))?;
        let head = match self.repo.refname_to_id(&self.tracking_ref()) {
            Ok(oid) => oid,
            Err(_) => {
                return Err(GitError::BranchNotFound { url: self.cfg.url.clone(), branch: self.cfg.branch.clone() });
            }
        };
        // A fetch that pruned the branch leaves no ref; one that found it moves it.
        let forced = match previous {
            Some(prev) if prev != head => !self.repo.graph_descendant_of(head, prev).unwrap_or(false),
            _ => false,
        };
        Ok(Fetched {
            commit: head.to_string(),
            subject: self.subject(&head.to_string()).unwrap_or_default(),
            previous: previous.map(|p| p.to_string()),
            forced,
        })
    }

    fn fetch_error(&self, e: git2::Error) -> GitError {
        GitError::Fetch { url: crate::secret::redact_url(&self.cfg.url), message: e.message().to_string() }
    }

    /// The first line of a commit's message.
    pub fn subject(&self, commit: &str) -> Result<String, GitError> {
        let c = self.find_commit(commit)?;
        Ok(c.summary().unwrap_or("").to_string())
    }

    fn find_commit(&self, commit: &str) -> Result<git2::Commit<'_>, GitError> {
        let read = |e: git2::Error| GitError::Read { commit: commit.to_string(), message: e.message().to_string() };
        let oid = Oid::from_str(commit).map_err(read)?;
        self.repo.find_commit(oid).map_err(read)
    }

    /// The spec files (`*.yaml`, `*.yml`, recursively, hidden ones skipped)
    /// under the configured path in `commit`, as (repository-relative path,
    /// path, content) for [`crate::core::spec::load::load_sources`].
    pub fn read_specs(&self, commit: &str) -> Result<Vec<SpecSource>, GitError> {
        let c = self.find_commit(commit)?;
        let read = |e: git2::Error| GitError::Read { commit: commit.to_string(), message: e.message().to_string() };
        let root = c.tree().map_err(read)?;
        let prefix = self.cfg.path.trim_matches('/');
        let tree = if prefix.is_empty() {
            root
        } else {
            let entry = root
                .get_path(Path::new(prefix))
                .map_err(|_| GitError::PathNotFound { path: prefix.to_string(), commit: commit.to_string() })?;
            self.repo
                .find_tree(entry.id())
                .map_err(|_| GitError::PathNotFound { path: prefix.to_string(), commit: commit.to_string() })?
        };
        let mut out = Vec::new();
        self.walk(&tree, prefix, &mut out).map_err(read)?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn walk(&self, tree: &git2::Tree<'_>, dir: &str, out: &mut Vec<SpecSource>) -> Result<(), git2::Error> {
        for entry in tree.iter() {
            let Some(name) = entry.name() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let path = if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
            match entry.kind() {
                Some(git2::ObjectType::Tree) => {
                    let sub = self.repo.find_tree(entry.id())?;
                    self.walk(&sub, &path, out)?;
                }
                Some(git2::ObjectType::Blob) if name.ends_with(".yaml") || name.ends_with(".yml") => {
                    let blob = self.repo.find_blob(entry.id())?;
                    out.push((path.clone(), PathBuf::from(&path), Ok(blob.content().to_vec())));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// (shown name, path, content) of one spec file.
pub type SpecSource = (String, PathBuf, Result<Vec<u8>, String>);

/// The reconciler's port for a git spec source.
impl crate::reconcile::SpecRevisions for GitSource {
    fn name(&self) -> String {
        let cfg = self.config();
        format!("{} ({}:{})", crate::secret::redact_url(&cfg.url), cfg.branch, cfg.path)
    }
    fn spec_path(&self) -> &str {
        &self.config().path
    }
    fn current(&self) -> Option<String> {
        GitSource::current(self)
    }
    fn fetch(&mut self) -> Result<crate::reconcile::Revision, crate::reconcile::error::BoxError> {
        let Fetched { commit, subject, previous, forced } = GitSource::fetch(self)?;
        Ok(crate::reconcile::Revision { commit, subject, previous, forced })
    }
    fn read_specs(&self, commit: &str) -> Result<Vec<SpecSource>, crate::reconcile::error::BoxError> {
        Ok(GitSource::read_specs(self, commit)?)
    }
    fn secrets(&self) -> &crate::core::spec::SecretPolicy {
        GitSource::secrets(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::Signature;

    /// A bare "remote" and a working clone that commits and pushes to it.
    struct Remote {
        _dir: tempfile::TempDir,
        bare: PathBuf,
        work: Repository,
    }

    impl Remote {
        fn new() -> Remote {
            let dir = tempfile::tempdir().expect("tempdir");
            let bare = dir.path().join("remote.git");
            Repository::init_bare(&bare).expect("bare");
            let work = Repository::init(dir.path().join("work")).expect("work");
            work.remote("origin", &format!("file://{}", bare.display())).expect("remote");
            Remote { _dir: dir, bare, work }
        }

        fn url(&self) -> String {
            format!("file://{}", self.bare.display())
        }

        fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
            let root = self.work.workdir().expect("workdir").to_path_buf();
            for (name, text) in files {
                let p = root.join(name);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(p, text).expect("write");
            }
            let mut index = self.work.index().expect("index");
            index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).expect("add");
            index.write().expect("write index");
            let tree = self.work.find_tree(index.write_tree().expect("tree")).expect("tree");
            let sig = Signature::now("Test", "test@example.com").expect("sig");
            let parent = self.work.head().ok().and_then(|h| h.peel_to_commit().ok());
            let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
            let oid = self.work.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).expect("commit");
            oid.to_string()
        }

        fn push(&self, force: bool) {
            let mut remote = self.work.find_remote("origin").expect("origin");
            let head = self.work.head().expect("head");
            let name = head.shorthand().expect("branch");
            let spec = format!("{}refs/heads/{name}:refs/heads/main", if force { "+" } else { "" });
            remote.push(&[spec.as_str()], None).expect("push");
        }
    }

    fn source(remote: &Remote, mirror: &Path) -> GitSource {
        GitSource::open(GitSourceConfig {
            url: remote.url(),
            branch: "main".into(),
            path: "extensions.d".into(),
            mirror_dir: mirror.to_path_buf(),
            token: None,
            ssh_key: None,
        })
        .expect("opens")
    }

    const SPEC: &str = "defaults: {context: c, transport: t, codecs: [ulaw]}\nextensions:\n  - {extension: \"1\", md5Cred: 0123456789abcdef0123456789abcdef}\n";

    #[test]
    fn fetch_reads_the_specs_of_the_fetched_commit() {
        let remote = Remote::new();
        let first = remote
            .commit(&[("extensions.d/a.yaml", SPEC), ("extensions.d/.hidden.yaml", "x"), ("README.md", "hi")], "Add a");
        remote.push(false);
        let mirror = tempfile::tempdir().expect("tempdir");
        let mut src = source(&remote, mirror.path());
        let f = src.fetch().expect("fetches");
        assert_eq!(f.commit, first);
        assert_eq!(f.subject, "Add a");
        assert!(!f.forced && f.previous.is_none());
        let files = src.read_specs(&f.commit).expect("reads");
        let names: Vec<&str> = files.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["extensions.d/a.yaml"]);
        let loaded = crate::core::spec::load::load_sources(files, src.secrets());
        assert_eq!(loaded.set.extensions.len(), 1);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&src.config().mirror_dir).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "only the daemon's user reads the mirror");
        }

        // A second commit: the old one stays readable, the new one is what fetch returns.
        let second = remote.commit(&[("extensions.d/sub/b.yaml", &SPEC.replace("\"1\"", "\"2\""))], "Add b");
        remote.push(false);
        let f2 = src.fetch().expect("fetches");
        assert_eq!(
            (f2.commit.as_str(), f2.previous.as_deref(), f2.forced),
            (second.as_str(), Some(first.as_str()), false)
        );
        assert_eq!(src.read_specs(&second).expect("reads").len(), 2);
        assert_eq!(src.read_specs(&first).expect("reads").len(), 1);
    }

    #[test]
    fn packs_from_many_fetches_are_merged_and_the_mirror_still_reads() {
        let remote = Remote::new();
        let mirror = tempfile::tempdir().expect("tempdir");
        let pack_count = || {
            std::fs::read_dir(mirror.path().join("objects/pack"))
                .expect("pack dir")
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        };
        let mut last = String::new();
        let mut most = 0;
        let mut src: Option<GitSource> = None;
        for i in 0..(MAX_PACKS * 3) {
            last = remote.commit(&[(&format!("extensions.d/f{i}.yaml"), SPEC)], &format!("commit {i}"));
            remote.push(false);
            let s = src.get_or_insert_with(|| source(&remote, mirror.path()));
            assert_eq!(s.fetch().expect("fetches").commit, last);
            most = most.max(pack_count());
        }
        // Before the merge, one pack per fetch: 48 here.
        assert!(most <= MAX_PACKS + 1, "{most} packs at the most");
        let src = src.expect("opened");
        assert_eq!(src.read_specs(&last).expect("the head reads after merging").len(), MAX_PACKS * 3);
        assert_eq!(src.subject(&last).expect("subject"), format!("commit {}", MAX_PACKS * 3 - 1));
    }

    /// Small bounds, many fetches: merges stay within their bound, full packs
    /// are never rewritten, loose objects are packed, and every commit of
    /// the history still reads.
    #[test]
    fn merges_are_bounded_and_lose_nothing() {
        let limits = Compaction { max_packs: 3, max_loose: 5, max_merge: 64 };
        let remote = Remote::new();
        let mirror = tempfile::tempdir().expect("tempdir");
        let packs = || -> Vec<(usize, PathBuf)> {
            std::fs::read_dir(mirror.path().join("objects/pack"))
                .expect("pack dir")
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pack"))
                .map(|p| (pack_object_count(&p.with_extension("idx")).expect("an index"), p))
                .collect()
        };
        let mut commits = Vec::new();
        let mut full: Vec<PathBuf> = Vec::new();
        let mut merges = 0;
        let mut src = None;
        for i in 0..40 {
            commits.push(remote.commit(&[(&format!("extensions.d/f{}.yaml", i % 7), &format!("# {i}\n{SPEC}"))], "c"));
            remote.push(false);
            let s: &mut GitSource = src.get_or_insert_with(|| source(&remote, mirror.path()));
            s.fetch().expect("fetches");
            let before = packs();
            if compact_with(mirror.path(), limits).expect("compacts") {
                merges += 1;
                *s = source(&remote, mirror.path());
            }
            let after = packs();
            // A pack that had reached half the ceiling before this merge is never rewritten.
            for (_, pack) in before.iter().filter(|(n, _)| *n >= limits.max_merge / 2) {
                assert!(after.iter().any(|(_, p)| p == pack), "a full pack was rewritten: {}", pack.display());
            }
            let before: Vec<PathBuf> = before.into_iter().map(|(_, p)| p).collect();
            for (n, p) in &after {
                assert!(*n <= limits.max_merge, "{n} objects in one pack");
                if *n >= limits.max_merge / 2 && before.contains(p) && !full.contains(p) {
                    full.push(p.clone());
                }
            }
            let small = after.iter().filter(|(n, _)| *n < limits.max_merge / 2).count();
            assert!(small <= limits.max_packs + 1, "{small} small packs after a fetch");
        }
        assert!(
            merges > 3 && !full.is_empty(),
            "{merges} merges, {} full packs: the bounds were never reached",
            full.len()
        );
        let s = source(&remote, mirror.path());
        for (i, c) in commits.iter().enumerate() {
            assert_eq!(s.read_specs(c).expect("every commit reads").len(), (i + 1).min(7), "commit {i}");
        }

        // A working clone's own commits are loose objects: they are packed too.
        let work = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(work.path()).expect("init");
        let sig = git2::Signature::now("t", "t@example.invalid").expect("signature");
        let mut parent: Option<Oid> = None;
        for i in 0..4 {
            let blob = repo.blob(format!("{i}").as_bytes()).expect("blob");
            let mut tb = repo.treebuilder(None).expect("treebuilder");
            tb.insert("f", blob, 0o100644).expect("insert");
            let tree = repo.find_tree(tb.write().expect("tree")).expect("tree");
            let parents: Vec<git2::Commit> = parent.iter().map(|p| repo.find_commit(*p).expect("parent")).collect();
            let refs: Vec<&git2::Commit> = parents.iter().collect();
            parent = Some(repo.commit(Some("HEAD"), &sig, &sig, "c", &tree, &refs).expect("commit"));
        }
        let objects = repo.path().join("objects");
        assert_eq!(loose_objects(&objects, 100).len(), 12);
        assert!(compact_with(work.path(), limits).expect("compacts"));
        assert!(loose_objects(&objects, 100).is_empty());
        let repo = Repository::open(work.path()).expect("reopens");
        let mut walk = repo.revwalk().expect("walk");
        walk.push_head().expect("head");
        assert_eq!(walk.count(), 4, "the history reads from the pack");
    }

    /// Another writer's short-lived refs (the write-back's and the soak's
    /// staging refs) come and go while the mirror fetches: no fetch fails.
    #[test]
    fn refs_deleted_while_fetching_do_not_fail_the_fetch() {
        let remote = Remote::new();
        let head = remote.commit(&[("extensions.d/a.yaml", SPEC)], "first");
        remote.push(false);
        let mirror = tempfile::tempdir().expect("tempdir");
        let mut src = source(&remote, mirror.path());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (bare, stop) = (remote.bare.clone(), stop.clone());
            let head = Oid::from_str(&head).expect("oid");
            std::thread::spawn(move || {
                let repo = Repository::open_bare(&bare).expect("remote");
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("refs/staging/push/{n}");
                    if let Ok(mut r) = repo.reference(&name, head, true, "stage") {
                        let _ = r.delete();
                    }
                    n += 1;
                }
                n
            })
        };
        let mut failures = Vec::new();
        for _ in 0..300 {
            if let Err(e) = src.fetch() {
                failures.push(e.to_string());
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let churned = churn.join().expect("churn");
        assert!(churned > 100, "the remote's refs hardly changed ({churned}): the test proves nothing");
        assert!(failures.is_empty(), "{} of 300 fetches failed, e.g. {}", failures.len(), failures[0]);
    }

    #[test]
    fn a_force_push_is_noticed() {
        let remote = Remote::new();
        remote.commit(&[("extensions.d/a.yaml", SPEC)], "one");
        remote.commit(&[("extensions.d/b.yaml", SPEC)], "two");
        remote.push(false);
        let mirror = tempfile::tempdir().expect("tempdir");
        let mut src = source(&remote, mirror.path());
        src.fetch().expect("fetches");
        // Rewrite history: reset to the first commit and commit something else.
        let head = remote.work.head().expect("head").peel_to_commit().expect("commit");
        let parent = head.parent(0).expect("parent");
        remote.work.reset(parent.as_object(), git2::ResetType::Hard, None).expect("reset");
        remote.commit(&[("extensions.d/c.yaml", SPEC)], "rewritten");
        remote.push(true);
        let f = src.fetch().expect("fetches");
        assert!(f.forced);
        assert_eq!(f.subject, "rewritten");
    }

    #[test]
    fn an_unreachable_remote_or_a_missing_branch_or_path_is_a_clear_error() {
        let mirror = tempfile::tempdir().expect("tempdir");
        let mut gone = GitSource::open(GitSourceConfig {
            url: "file:///nonexistent/repo.git".into(),
            branch: "main".into(),
            path: String::new(),
            mirror_dir: mirror.path().join("m"),
            token: None,
            ssh_key: None,
        })
        .expect("opens");
        assert!(matches!(gone.fetch(), Err(GitError::Fetch { .. })));

        let remote = Remote::new();
        let c = remote.commit(&[("other/a.yaml", SPEC)], "one");
        remote.push(false);
        let mut src = GitSource::open(GitSourceConfig {
            url: remote.url(),
            branch: "no-such-branch".into(),
            path: String::new(),
            mirror_dir: mirror.path().join("n"),
            token: None,
            ssh_key: None,
        })
        .expect("opens");
        assert!(matches!(src.fetch(), Err(GitError::BranchNotFound { .. })), "{:?}", src.fetch());
        let mut src = source(&remote, &mirror.path().join("o"));
        src.fetch().expect("fetches");
        assert!(matches!(src.read_specs(&c), Err(GitError::PathNotFound { .. })));

        // The branch is deleted on the remote after a good fetch: an error, and
        // the commit fetched before stays readable.
        let mut origin = remote.work.find_remote("origin").expect("origin");
        origin.push(&[":refs/heads/main"], None).expect("delete branch");
        assert!(matches!(src.fetch(), Err(GitError::BranchNotFound { .. })));
        assert!(src.subject(&c).is_ok());
    }
}
