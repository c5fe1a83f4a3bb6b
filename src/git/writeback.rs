//! Edits that become commits: the API and UI create, change and delete
//! extensions by editing spec files, and — where the specs live in git —
//! committing (and pushing) the edit, so the repository stays the truth.
//!
//! Three places an edit can land, chosen by what is there:
//! - plain files (no git at all): the spec directory is edited in place;
//! - a local repository with no remote: edited and committed;
//! - a remote: a working clone under the state directory is reset to the
//!   remote branch, edited, committed and pushed — to the tracked branch
//!   (`direct`; a non-fast-forward push fetches, re-applies the edit on the
//!   new head and retries) or to a new branch (`review`).
//!
//! An edit is an operation (create, update, delete one extension), not a
//! patch, so "rebasing" it onto a newer head is re-applying it; a true
//! conflict (the extension was created or deleted meanwhile) is
//! [`WriteError::Conflict`] and nothing is lost or half-written.
//!
//! Architecture invariant: nothing is committed or left on disk that does
//! not validate; an edit is validated before it is written, so a refused
//! one never touches a file.
//! Blocking (git2, files): call from `spawn_blocking`, one edit at a time.

use crate::core::diag::Diagnostic;
use crate::core::spec::edit::{self, EditError};
use crate::core::spec::{self, ExtensionEntry, LoadOptions, SecretPolicy};
use crate::reconcile::DirSource;
use git2::{PushOptions, RemoteCallbacks, Repository, Signature};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One change to the declared extensions.
#[derive(Clone, Debug)]
pub enum EditOp {
    Create(ExtensionEntry),
    /// Replace the entry of this number with the given one.
    Update(String, ExtensionEntry),
    /// Set the named fields (camelCase) of the entry of this number to
    /// their values in the given entry (absent there: removed); the other
    /// fields keep what the file says. A partial update.
    Patch(String, ExtensionEntry, Vec<String>),
    Delete(String),
    /// A bulk import: a new spec file `file` (relative to the spec
    /// directory) holding `text`, which declares `numbers`, none of which
    /// may exist yet. One edit, one commit.
    CreateFile {
        file: String,
        text: String,
        numbers: Vec<String>,
    },
}

impl EditOp {
    pub fn number(&self) -> &str {
        match self {
            EditOp::Create(e) => e.extension.as_deref().unwrap_or(""),
            EditOp::Update(n, _) | EditOp::Patch(n, _, _) | EditOp::Delete(n) => n,
            EditOp::CreateFile { numbers, .. } => numbers.first().map_or("import", String::as_str),
        }
    }

    /// The commit message's subject.
    pub fn summary(&self) -> String {
        match self {
            EditOp::Create(e) => match &e.display_name {
                Some(name) => format!("Add extension {} ({name})", self.number()),
                None => format!("Add extension {}", self.number()),
            },
            EditOp::Update(n, _) => format!("Update extension {n}"),
            EditOp::Patch(n, _, fields) => format!("Update extension {n} ({})", fields.join(", ")),
            EditOp::Delete(n) => format!("Delete extension {n}"),
            EditOp::CreateFile { file, numbers, .. } => match (numbers.first(), numbers.last()) {
                (Some(a), Some(b)) if numbers.len() > 1 => {
                    format!("Import {} extensions ({a}–{b}) into {file}", numbers.len())
                }
                _ => format!("Import extension {} into {file}", self.number()),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("extension {0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the edit would make the specs invalid")]
    Invalid(Vec<Diagnostic>),
    #[error("{0}")]
    Edit(#[from] EditError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("git: {0}")]
    Git(String),
}

impl From<git2::Error> for WriteError {
    fn from(e: git2::Error) -> Self {
        WriteError::Git(e.message().to_string())
    }
}

/// Who made an edit (the signed-in user, or the configured identity).
#[derive(Clone, Debug)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// Applies `op` to the spec files under `spec_dir`; returns the files it
/// changed (relative to `spec_dir`). Validates the whole directory as the
/// edit would leave it, with `secrets` (the policy the daemon loads the
/// result with: the configured `secrets.dir` / `secrets.envPattern`), and
/// writes nothing if it does not validate.
pub fn apply_to_dir(spec_dir: &Path, op: &EditOp, secrets: &SecretPolicy) -> Result<Vec<PathBuf>, WriteError> {
    let options = LoadOptions { display_base: Some(spec_dir.to_path_buf()), secrets: Some(secrets.clone()) };
    apply_to_dir_with(spec_dir, op, &|edit: Option<Edited>| {
        spec::load::load_paths_edited(&[spec_dir.to_path_buf()], &options, |sources| {
            if let Some((rel, content)) = edit {
                spec::load::override_source(sources, spec_dir.join(rel), rel.display().to_string(), content);
            }
        })
    })
}

/// [`apply_to_dir`] with the daemon's spec directory cache (its
/// `reconcile::DirSource`, with the same secret policy): the loads before
/// and after the edit parse only the files whose bytes changed, and the
/// edited file's parse is the one the next run uses.
pub fn apply_to_cached_dir(cache: &DirSource, op: &EditOp) -> Result<Vec<PathBuf>, WriteError> {
    apply_to_dir_with(&cache.path, op, &|edit: Option<Edited>| {
        let (d, files) = match edit {
            None => cache.load_with_files(),
            Some((rel, content)) => cache.load_as_if(rel, content),
        };
        spec::load::Loaded { set: d.set, diagnostics: d.diagnostics, files: files.to_vec() }
    })
}

/// A file of an edit (relative to the spec directory) and what it is to
/// hold (`None`: removed).
type Edited<'a> = (&'a Path, Option<&'a [u8]>);

/// Validates the edit against the directory as it would be (nothing is
/// written unless it validates), then writes the one file.
fn apply_to_dir_with(
    spec_dir: &Path,
    op: &EditOp,
    load: &dyn Fn(Option<Edited>) -> spec::load::Loaded,
) -> Result<Vec<PathBuf>, WriteError> {
    let started = std::time::Instant::now();
    let loaded = load(None);
    let t_loaded = started.elapsed();
    // A file with an error contributes none of its extensions to the set:
    // only those files are read again for the numbers they declare (every
    // file, read twice, was a third of a 1,000-extension import at 10k).
    let invalid = files_with_errors(&loaded);
    let existing = loaded.set.get(op.number()).map(|e| e.origin.file.clone());
    let declared_somewhere = existing.is_some() || declared_in_invalid_file(spec_dir, &invalid, op.number());
    let (rel, after): (PathBuf, Option<String>) = match op {
        EditOp::Create(entry) => {
            if declared_somewhere {
                return Err(WriteError::Conflict(format!("extension {} already exists", op.number())));
            }
            let rel = PathBuf::from(format!("{}.yaml", op.number()));
            if spec_dir.join(&rel).exists() {
                return Err(WriteError::Conflict(format!("{} already exists", rel.display())));
            }
            (rel, Some(edit::new_file(entry, 0)?))
        }
        EditOp::Update(number, entry) => {
            let rel = PathBuf::from(existing.ok_or_else(|| WriteError::NotFound(number.clone()))?);
            let text = std::fs::read_to_string(spec_dir.join(&rel))?;
            let new = edit::replace_entry(&rel.display().to_string(), &text, number, entry)?;
            (rel, Some(new))
        }
        EditOp::Patch(number, patch, fields) => {
            let rel = PathBuf::from(existing.ok_or_else(|| WriteError::NotFound(number.clone()))?);
            let text = std::fs::read_to_string(spec_dir.join(&rel))?;
            let shown = rel.display().to_string();
            let current = edit::find_entry(&shown, &text, number)?;
            let entry = merge(&current, patch, fields)?;
            let new = edit::replace_entry(&shown, &text, number, &entry)?;
            (rel, Some(new))
        }
        EditOp::CreateFile { file, text, numbers } => {
            // Every number declared anywhere, valid file or not, read once:
            // asking file by file for each of 1,000 numbers re-parsed a 10k
            // estate 1,000 times (46 s).
            let declared = declared_numbers(spec_dir, &invalid);
            let taken: Vec<&str> = numbers
                .iter()
                .filter(|n| loaded.set.get(n).is_some() || declared.contains(n.as_str()))
                .map(String::as_str)
                .collect();
            if !taken.is_empty() {
                return Err(WriteError::Conflict(format!("these extensions already exist: {}", taken.join(", "))));
            }
            let rel = PathBuf::from(file);
            if rel.components().count() != 1 || spec_dir.join(&rel).exists() {
                return Err(WriteError::Conflict(format!("{} already exists", rel.display())));
            }
            (rel, Some(text.clone()))
        }
        EditOp::Delete(number) => {
            let rel = PathBuf::from(existing.ok_or_else(|| WriteError::NotFound(number.clone()))?);
            let text = std::fs::read_to_string(spec_dir.join(&rel))?;
            let new = edit::remove_entry(&rel.display().to_string(), &text, number)?;
            // A file the API made for this one extension goes away with it.
            let own_file = rel.file_name().is_some_and(|n| n.to_string_lossy() == format!("{number}.yaml"));
            let emptied = spec::load::raw_entries("", &new).map(|(_, e)| e.is_empty()).unwrap_or(false);
            (rel, if own_file && emptied { None } else { Some(new) })
        }
    };
    let t_edited = started.elapsed();
    let check = load(Some((&rel, after.as_deref().map(str::as_bytes))));
    let t_checked = started.elapsed();
    let new_errors: Vec<Diagnostic> =
        check.diagnostics.into_iter().filter(|d| d.is_error() && !loaded.diagnostics.contains(d)).collect();
    if !new_errors.is_empty() {
        return Err(WriteError::Invalid(new_errors));
    }
    let path = spec_dir.join(&rel);
    match &after {
        Some(text) => crate::asterisk::managed::write_atomic(&path, text.as_bytes())?,
        None => std::fs::remove_file(&path)?,
    }
    tracing::debug!(
        load_ms = ms(t_loaded),
        edit_ms = ms(t_edited - t_loaded),
        validate_ms = ms(t_checked - t_edited),
        write_ms = ms(started.elapsed() - t_checked),
        "edit steps"
    );
    Ok(vec![rel])
}

/// `current` with `fields` taken from `patch`.
fn merge(current: &ExtensionEntry, patch: &ExtensionEntry, fields: &[String]) -> Result<ExtensionEntry, WriteError> {
    let to_map = |e: &ExtensionEntry| match serde_json::to_value(e) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(WriteError::Conflict("cannot merge the entry".into())),
    };
    let mut merged = to_map(current)?;
    let patch = to_map(patch)?;
    for f in fields {
        match patch.get(f) {
            Some(v) => merged.insert(f.clone(), v.clone()),
            None => merged.remove(f),
        };
    }
    serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|e| WriteError::Conflict(format!("cannot merge the entry: {e}")))
}

/// The files of `loaded` with an error (as diagnostics show them).
fn files_with_errors(loaded: &spec::load::Loaded) -> Vec<String> {
    let mut files: Vec<String> =
        loaded.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.location.file.clone()).collect();
    files.sort();
    files.dedup();
    files
}

/// Every extension number `files` declare, as written.
fn declared_numbers(spec_dir: &Path, files: &[String]) -> std::collections::HashSet<String> {
    files
        .iter()
        .filter_map(|f| {
            let t = std::fs::read_to_string(spec_dir.join(f)).ok()?;
            spec::load::raw_entries(f, &t).ok()
        })
        .flat_map(|(_, entries)| entries.into_iter().filter_map(|(e, _)| e.extension))
        .collect()
}

fn declared_in_invalid_file(spec_dir: &Path, files: &[String], number: &str) -> bool {
    files.iter().any(|f| {
        std::fs::read_to_string(spec_dir.join(f))
            .ok()
            .and_then(|t| spec::load::raw_entries(f, &t).ok())
            .is_some_and(|(_, entries)| entries.iter().any(|(e, _)| e.extension.as_deref() == Some(number)))
    })
}

/// Where edits are pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Push to the tracked branch.
    Direct,
    /// Push a new branch for a pull request.
    Review,
}

/// A remote repository to commit edits to.
#[derive(Clone)]
pub struct RemoteTarget {
    pub url: String,
    pub branch: String,
    /// The spec directory inside the repository (e.g. `extensions.d`).
    pub path: String,
    /// The working clone, under the state directory.
    pub work_dir: PathBuf,
    pub mode: Mode,
    /// The committer (the author is the user who made the edit).
    pub committer: Author,
    pub token: Option<crate::secret::SecretString>,
    pub ssh_key: Option<PathBuf>,
    /// Called just before each push (tests use it to push from elsewhere first).
    #[doc(hidden)]
    pub before_push: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for RemoteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTarget")
            .field("url", &crate::secret::redact_url(&self.url))
            .field("branch", &self.branch)
            .field("path", &self.path)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// What a committed edit produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub commit: String,
    /// The branch pushed to (the tracked one, or the review branch).
    pub branch: Option<String>,
    /// A link to open a pull/merge request, where the forge is known.
    pub compare_url: Option<String>,
}

/// How many times a direct push is retried after someone else pushed first.
const PUSH_ATTEMPTS: usize = 4;

impl RemoteTarget {
    fn callbacks(&self) -> RemoteCallbacks<'static> {
        crate::git::credentials(self.token.clone(), self.ssh_key.clone())
    }

    fn open_clone(&self) -> Result<Repository, WriteError> {
        // Each sync fetches a pack: merge them before they pile up.
        if let Err(e) = crate::git::compact(&self.work_dir)
            && self.work_dir.join(".git").exists()
        {
            tracing::warn!(error = %e.message(), "cannot compact the working clone's packs");
        }
        if let Ok(repo) = Repository::open(&self.work_dir) {
            return Ok(repo);
        }
        // A clone lists the remote's refs too: one that vanishes meanwhile
        // fails it (see `git::fetch_retrying`), so it is tried again afresh.
        let mut tries = 0;
        loop {
            std::fs::create_dir_all(&self.work_dir)?;
            let mut fo = git2::FetchOptions::new();
            fo.remote_callbacks(self.callbacks());
            match git2::build::RepoBuilder::new()
                .branch(&self.branch)
                .fetch_options(fo)
                .clone(&self.url, &self.work_dir)
            {
                Ok(repo) => return Ok(repo),
                Err(e) if tries < crate::git::VANISHED_REF_RETRIES && crate::git::ref_vanished(&e) => {
                    tracing::debug!(error = %e.message(), "a ref vanished while cloning; cloning again");
                    let _ = std::fs::remove_dir_all(&self.work_dir);
                    tries += 1;
                }
                Err(e) => {
                    return Err(WriteError::Git(format!(
                        "cannot clone {}: {}",
                        crate::secret::redact_url(&self.url),
                        e.message()
                    )));
                }
            }
        }
    }

    /// Resets the working clone to the remote branch's head.
    fn sync(&self, repo: &Repository) -> Result<(), WriteError> {
        let mut remote = repo.find_remote("origin")?;
        let mut fo = git2::FetchOptions::new();
        fo.remote_callbacks(self.callbacks());
        let spec = format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.branch);
        crate::git::fetch_retrying(&mut remote, &[spec.as_str()], &mut fo)?;
        let head = repo.find_reference(&format!("refs/remotes/origin/{}", self.branch))?.peel_to_commit()?;
        repo.set_head_detached(head.id())?;
        repo.reset(head.as_object(), git2::ResetType::Hard, None)?;
        repo.cleanup_state()?;
        Ok(())
    }

    /// Applies `op`, commits it as `author` and pushes. See the module doc.
    pub fn commit(&self, op: &EditOp, author: &Author, secrets: &SecretPolicy) -> Result<Committed, WriteError> {
        let repo = self.open_clone()?;
        let root = repo.workdir().ok_or_else(|| WriteError::Git("the working clone is bare".into()))?.to_path_buf();
        let spec_dir = root.join(&self.path);
        for _ in 0..PUSH_ATTEMPTS {
            self.sync(&repo)?;
            let changed = apply_to_dir(&spec_dir, op, secrets)?;
            let rel: Vec<PathBuf> = changed.iter().map(|p| Path::new(&self.path).join(p)).collect();
            let commit = commit_paths(&repo, &rel, op, author, &self.committer)?;
            let (branch, refspec) = match self.mode {
                Mode::Direct => (self.branch.clone(), format!("{commit}:refs/heads/{}", self.branch)),
                Mode::Review => {
                    let b = format!("asterisk-gitops/{}-{}", op.number(), chrono::Utc::now().format("%Y%m%d%H%M%S"));
                    let spec = format!("{commit}:refs/heads/{b}");
                    (b, spec)
                }
            };
            if let Some(hook) = &self.before_push {
                hook();
            }
            let pushed = match (self.mode, local_remote_path(&self.url)) {
                // A file:// remote: libgit2 checks for a fast-forward, then
                // sets the ref by force, so a push from elsewhere in between
                // would be overwritten. Move the ref only if it still is
                // where this edit started from.
                (Mode::Direct, Some(path)) => {
                    let from = repo
                        .find_reference(&format!("refs/remotes/origin/{}", self.branch))
                        .ok()
                        .and_then(|r| r.target());
                    self.push_compare_and_swap(&repo, &path, &commit, from)?
                }
                _ => self.push(&repo, &refspec)?,
            };
            match pushed {
                None => {
                    if let Some(path) = local_remote_path(&self.url) {
                        compact_remote(&path);
                    }
                    return Ok(Committed {
                        commit: commit.clone(),
                        compare_url: if self.mode == Mode::Review {
                            compare_url(&self.url, &self.branch, &branch)
                        } else {
                            None
                        },
                        branch: Some(branch),
                    });
                }
                // Someone pushed first: start again from their head.
                Some(_) if self.mode == Mode::Direct => continue,
                Some(reason) => return Err(WriteError::Git(format!("push rejected: {reason}"))),
            }
        }
        Err(WriteError::Conflict(format!(
            "the branch {} kept moving; the edit was not pushed after {PUSH_ATTEMPTS} attempts, try again",
            self.branch
        )))
    }

    /// Pushes `commit`'s objects to a file:// remote under a ref of its own,
    /// then moves the branch there only if it still points at `from` (under
    /// the ref's lock file, which `git` itself honours too). `Ok(Some(reason))`
    /// when the branch moved meanwhile.
    fn push_compare_and_swap(
        &self,
        repo: &Repository,
        remote_path: &Path,
        commit: &str,
        from: Option<git2::Oid>,
    ) -> Result<Option<String>, WriteError> {
        let staging = format!("refs/asterisk-gitops/push/{commit}");
        if let Some(reason) = self.push(repo, &format!("{commit}:{staging}"))? {
            return Ok(Some(reason));
        }
        let remote = Repository::open(remote_path)?;
        let moved = move_branch_if_unmoved(
            &remote,
            &self.branch,
            git2::Oid::from_str(commit)?,
            from,
            "asterisk-gitops: API edit",
        );
        if let Ok(mut r) = remote.find_reference(&staging) {
            let _ = r.delete();
        }
        Ok(moved?.err())
    }

    /// Pushes; `Ok(Some(reason))` when the remote rejected the update. Like
    /// a fetch, a push lists the remote's refs first, so a ref another
    /// writer deleted meanwhile fails it with "not found": it is tried again
    /// (the soak's refused writes, BENCHMARKS.md).
    fn push(&self, repo: &Repository, refspec: &str) -> Result<Option<String>, WriteError> {
        let mut tries = 0;
        loop {
            match self.push_once(repo, refspec) {
                Err(e) if tries < crate::git::VANISHED_REF_RETRIES && crate::git::ref_vanished(&e) => {
                    tracing::debug!(error = %e.message(), "a ref vanished while pushing; pushing again");
                    tries += 1;
                }
                other => return other.map_err(WriteError::from),
            }
        }
    }

    fn push_once(&self, repo: &Repository, refspec: &str) -> Result<Option<String>, git2::Error> {
        let mut remote = repo.find_remote("origin")?;
        let rejected = std::rc::Rc::new(std::cell::RefCell::new(None));
        let mut callbacks = self.callbacks();
        let r = rejected.clone();
        callbacks.push_update_reference(move |_refname, status| {
            if let Some(msg) = status {
                *r.borrow_mut() = Some(msg.to_string());
            }
            Ok(())
        });
        let mut po = PushOptions::new();
        po.remote_callbacks(callbacks);
        match remote.push(&[refspec], Some(&mut po)) {
            Ok(()) => Ok(rejected.borrow_mut().take()),
            // file:// remotes report a non-fast-forward as an error rather than a status.
            Err(e) if e.code() == git2::ErrorCode::NotFastForward || e.message().contains("fast-forward") => {
                Ok(Some(e.message().to_string()))
            }
            Err(e) => Err(e),
        }
    }
}

/// Moves `branch` of the repository `repo` (a file:// remote opened
/// directly) to `to`, only if it still points at `from` (`None`: only if it
/// does not exist), under the ref's lock file, which `git` itself honours.
/// `Ok(Err(reason))` when the branch moved meanwhile.
pub fn move_branch_if_unmoved(
    repo: &Repository,
    branch: &str,
    to: git2::Oid,
    from: Option<git2::Oid>,
    message: &str,
) -> Result<Result<(), String>, git2::Error> {
    let name = format!("refs/heads/{branch}");
    let moved = match from {
        Some(from) => repo.reference_matching(&name, to, true, from, message),
        None => repo.reference(&name, to, false, message),
    };
    match moved {
        Ok(_) => Ok(Ok(())),
        Err(e) if matches!(e.code(), git2::ErrorCode::Modified | git2::ErrorCode::Exists | git2::ErrorCode::Locked) => {
            Ok(Err(format!("the branch moved: {}", e.message())))
        }
        Err(e) => Err(e),
    }
}

/// Merges a `file://` remote's small packs after a push, as a git host
/// does after receiving one (`git receive-pack` runs `git gc --auto`).
/// libgit2 pushes to a file:// remote in-process and writes one pack per
/// push, with no housekeeping: the soak's remote had 3,000 packs after 30
/// minutes, and every fetch and push, opening that repository, looked
/// objects up in all of them (writes slowed with the history, and the
/// mapped pack indexes made the RSS peaks; BENCHMARKS.md). Readers of the
/// remote (the mirror, other clones) are safe meanwhile: the merged pack is
/// in place before the old ones go, and libgit2 treats a pack that vanished
/// as one without the object, then looks again in the new list.
fn compact_remote(path: &Path) {
    if let Err(e) = crate::git::compact(path) {
        tracing::warn!(error = %e.message(), "cannot compact the file:// remote's packs after pushing");
    }
}

/// The repository path of a `file://` remote; `None` for any other.
fn local_remote_path(url: &str) -> Option<PathBuf> {
    url.strip_prefix("file://").filter(|p| p.starts_with('/')).map(PathBuf::from)
}

/// Commits the given paths (added, changed or removed) of a repository's
/// working tree on top of HEAD. Returns the new commit id.
pub fn commit_paths(
    repo: &Repository,
    paths: &[PathBuf],
    op: &EditOp,
    author: &Author,
    committer: &Author,
) -> Result<String, WriteError> {
    let root = repo.workdir().ok_or_else(|| WriteError::Git("bare repository".into()))?.to_path_buf();
    let mut index = repo.index()?;
    for p in paths {
        if root.join(p).exists() {
            index.add_path(p)?;
        } else {
            index.remove_path(p)?;
        }
    }
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let author_sig = Signature::now(&author.name, &author.email)?;
    let committer_sig = Signature::now(&committer.name, &committer.email)?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let message =
        format!("{}\n\nMade through the asterisk-gitops API by {} <{}>.\n", op.summary(), author.name, author.email);
    let oid = repo.commit(Some("HEAD"), &author_sig, &committer_sig, &message, &tree, &parents)?;
    Ok(oid.to_string())
}

/// Commits an edit in the local repository that contains `spec_dir` (no
/// push). `Ok(None)` when `spec_dir` is not inside a git repository.
pub fn commit_local(
    spec_dir: &Path,
    changed: &[PathBuf],
    op: &EditOp,
    author: &Author,
) -> Result<Option<String>, WriteError> {
    let Ok(repo) = Repository::discover(spec_dir) else { return Ok(None) };
    let Some(root) = repo.workdir().map(Path::to_path_buf) else { return Ok(None) };
    let abs_dir = std::fs::canonicalize(spec_dir)?;
    let root = std::fs::canonicalize(root)?;
    let rel_dir = abs_dir.strip_prefix(&root).map(Path::to_path_buf).unwrap_or_default();
    let paths: Vec<PathBuf> = changed.iter().map(|p| rel_dir.join(p)).collect();
    commit_paths(&repo, &paths, op, author, author).map(Some)
}

/// A link to open a pull/merge request for `branch` against `base`, for
/// remotes on a known forge (GitHub, GitLab, Gitea/Forgejo-like hosts).
pub fn compare_url(remote: &str, base: &str, branch: &str) -> Option<String> {
    let web = if let Some(rest) = remote.strip_prefix("git@") {
        let (host, path) = rest.split_once(':')?;
        format!("https://{host}/{path}")
    } else if remote.starts_with("https://") || remote.starts_with("http://") {
        // Drop any credentials from the URL.
        let (scheme, rest) = remote.split_once("://")?;
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        format!("{scheme}://{rest}")
    } else {
        return None;
    };
    let web = web.trim_end_matches('/').trim_end_matches(".git");
    if web.contains("gitlab") {
        Some(format!("{web}/-/compare/{base}...{branch}"))
    } else if web.contains("github") || web.contains("gitea") || web.contains("codeberg") || web.contains("forgejo") {
        Some(format!("{web}/compare/{base}...{branch}"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_urls_for_known_forges() {
        assert_eq!(
            compare_url("https://github.com/acme/pbx.git", "main", "asterisk-gitops/1001-x").as_deref(),
            Some("https://github.com/acme/pbx/compare/main...asterisk-gitops/1001-x")
        );
        assert_eq!(
            compare_url("git@gitlab.com:acme/pbx.git", "main", "b").as_deref(),
            Some("https://gitlab.com/acme/pbx/-/compare/main...b")
        );
        assert_eq!(
            compare_url("https://token:secret@gitea.example.com/acme/pbx", "main", "b").as_deref(),
            Some("https://gitea.example.com/acme/pbx/compare/main...b")
        );
        assert_eq!(compare_url("file:///srv/pbx.git", "main", "b"), None);
    }
}

/// Initialises libgit2 by looking for the repository `spec_dir` is in: its
/// first call in a process costs about 20 ms (measured), which the daemon
/// pays at start rather than in its first edit's answer.
pub fn warm_up(spec_dir: &Path) {
    let _ = Repository::discover(spec_dir);
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Where edits land; see the module doc.
#[derive(Clone, Debug)]
pub enum Target {
    /// Edit the files; commit too if the directory is inside a git repository.
    Dir(PathBuf),
    Remote(RemoteTarget),
}

/// Serialises edits: concurrent requests queue here, one edit at a time,
/// so none is lost.
#[derive(Debug)]
pub struct WriteBack {
    target: Target,
    secrets: SecretPolicy,
    lock: std::sync::Mutex<()>,
    /// For a `Dir` target: the daemon's cache of the spec directory.
    cache: Option<Arc<DirSource>>,
}

impl WriteBack {
    /// Edits land in `target` and are validated with `secrets`: the same
    /// policy the daemon loads the specs with (`config::Settings::secrets`),
    /// so the API accepts exactly what the next reconcile will.
    pub fn new(target: Target, secrets: SecretPolicy) -> Self {
        WriteBack { target, secrets, lock: std::sync::Mutex::new(()), cache: None }
    }

    /// Validates edits of a `Dir` target through `cache` (the reconcile
    /// loop's own `DirSource` of that directory, with the same policy).
    pub fn with_cache(mut self, cache: Arc<DirSource>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The secret policy edits are validated with.
    pub fn secrets(&self) -> &SecretPolicy {
        &self.secrets
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Applies one edit (blocking). For `Dir` targets the result has no
    /// branch, and a commit only when the directory is in a repository.
    pub fn apply(&self, op: &EditOp, author: &Author) -> Result<Committed, WriteError> {
        self.apply_then(op, author, &|| {})
    }

    /// [`apply`](WriteBack::apply), calling `written` as soon as the edit
    /// is where the daemon reads the specs from: for a `Dir` target once
    /// the file is written (validated before, committed after), for a
    /// `Remote` once the commit is pushed. The API asks for its run there,
    /// so the change goes live while the local commit is still being made.
    pub fn apply_then(&self, op: &EditOp, author: &Author, written: &dyn Fn()) -> Result<Committed, WriteError> {
        // A panic in another edit poisons the lock but leaves no half-edit
        // behind (files are replaced atomically), so carry on.
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        let done = self.apply_locked(op, author, written, started);
        tracing::debug!(took_ms = ms(started.elapsed()), ok = done.is_ok(), "edit written back");
        done
    }

    fn apply_locked(
        &self,
        op: &EditOp,
        author: &Author,
        written: &dyn Fn(),
        started: std::time::Instant,
    ) -> Result<Committed, WriteError> {
        match &self.target {
            Target::Dir(dir) => {
                let changed = match &self.cache {
                    Some(cache) if cache.path == *dir => apply_to_cached_dir(cache, op)?,
                    _ => apply_to_dir(dir, op, &self.secrets)?,
                };
                tracing::debug!(took_ms = ms(started.elapsed()), "edit validated and written");
                written();
                let committing = std::time::Instant::now();
                let commit = commit_local(dir, &changed, op, author)?;
                tracing::debug!(took_ms = ms(committing.elapsed()), committed = commit.is_some(), "local commit");
                Ok(Committed { commit: commit.unwrap_or_default(), branch: None, compare_url: None })
            }
            Target::Remote(remote) => {
                let done = remote.commit(op, author, &self.secrets)?;
                written();
                Ok(done)
            }
        }
    }
}
