//! Load + validate + render on generated estates of 1k, 10k and 100k extensions.
//!
//!     cargo bench --bench spec
//!
//! Figures and the machine they were measured on: BENCHMARKS.md.

use asterisk_gitops::core::render::{Renderer, SourceInfo};
use asterisk_gitops::core::spec::{self, LoadOptions};
use asterisk_gitops::secret::ProcessSecrets;
use std::path::PathBuf;
use std::sync::OnceLock;

fn main() {
    divan::main();
}

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// One generated estate per size, written once per process.
fn estate(n: usize) -> PathBuf {
    static DIRS: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = DIRS.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let dir = root.path().join(n.to_string());
    if !dir.exists() {
        asterisk_gitops::estate::write(&dir, n).expect("write estate");
    }
    dir
}

#[divan::bench(args = SIZES, sample_count = 10)]
fn load_validate(bencher: divan::Bencher, n: usize) {
    let dir = estate(n);
    bencher.bench(|| {
        let loaded = spec::load_paths(std::slice::from_ref(&dir), &LoadOptions::default());
        assert_eq!(loaded.set.extensions.len(), n);
        loaded
    });
}

#[divan::bench(args = SIZES, sample_count = 10)]
fn load_validate_render(bencher: divan::Bencher, n: usize) {
    let dir = estate(n);
    let renderer = Renderer::new(None).expect("template");
    bencher.bench(|| {
        let loaded = spec::load_paths(std::slice::from_ref(&dir), &LoadOptions::default());
        renderer.render(&loaded.set, &SourceInfo::default(), &ProcessSecrets).expect("renders")
    });
}

#[divan::bench(args = SIZES, sample_count = 10)]
fn render_only(bencher: divan::Bencher, n: usize) {
    let dir = estate(n);
    let loaded = spec::load_paths(std::slice::from_ref(&dir), &LoadOptions::default());
    let renderer = Renderer::new(None).expect("template");
    bencher.bench(|| renderer.render(&loaded.set, &SourceInfo::default(), &ProcessSecrets).expect("renders"));
}

/// The daemon's cached directory (`reconcile::DirSource`) loaded again after
/// one extension in one file changed: what a saved file costs before its run
/// can plan (the files are read and hashed, the changed one parsed, the set
/// assembled).
#[divan::bench(args = SIZES, sample_count = 10)]
fn dir_reload_one_file_changed(bencher: divan::Bencher, n: usize) {
    let dir = estate(n).join("..").join(format!("reload-{n}"));
    if !dir.exists() {
        asterisk_gitops::estate::write(&dir, n).expect("write estate");
    }
    let source = asterisk_gitops::reconcile::DirSource::new(dir.clone());
    assert_eq!(source.load().set.extensions.len(), n);
    let path = dir.join("sales/0000.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let mut round = 0u64;
    bencher
        .with_inputs(|| {
            round += 1;
            let changed = text.replacen("displayName: Agent 100000\n", &format!("displayName: Agent {round}\n"), 1);
            std::fs::write(&path, changed).expect("write");
        })
        .bench_local_values(|()| {
            let d = source.load();
            assert_eq!(d.set.extensions.len(), n);
            d
        });
}
