//! The managed file's diff against a file on disk that does not resemble
//! what renders: a foreign file (another estate's sections) and a truncated
//! one. Every plan computes this diff; it must stay bounded (under 1 s at
//! 100k extensions) whatever is on disk.
//!
//!     cargo bench --bench diff

use asterisk_gitops::core::plan::masked_diff;
use asterisk_gitops::core::render::{Renderer, SourceInfo};
use asterisk_gitops::reconcile::load_dir;
use asterisk_gitops::secret::ProcessSecrets;

fn main() {
    divan::main();
}

/// The rendered managed file of a generated estate of `n` extensions.
fn rendered(n: usize) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    asterisk_gitops::estate::write(dir.path(), n).expect("estate");
    let desired = load_dir(dir.path());
    assert_eq!(desired.set.extensions.len(), n, "the generated estate loads");
    Renderer::new(None)
        .expect("template")
        .render(&desired.set, &SourceInfo::default(), &ProcessSecrets)
        .expect("render")
}

/// A managed file from somewhere else: as many sections, none of the same name.
fn foreign(n: usize) -> String {
    let mut out = String::from("; hand-written, or another host's managed file\n");
    for i in 0..n {
        let name = format!("foreign-{i}");
        out.push_str(&format!(
            "\n[{name}]\ntype = endpoint\ncontext = default\ndisallow = all\nallow = ulaw\nauth = {name}\naors = {name}\n\n[{name}]\ntype = auth\nauth_type = userpass\nusername = {name}\npassword = secret-{i}\n\n[{name}]\ntype = aor\nmax_contacts = 1\n"
        ));
    }
    out
}

#[divan::bench(args = [10_000, 100_000], sample_count = 3)]
fn foreign_file(bencher: divan::Bencher, n: usize) {
    let new = rendered(n);
    let old = foreign(n);
    bencher.bench_local(|| {
        let d = masked_diff(&old, &new);
        assert!(!d.contains("secret-1\n"), "secrets stay masked");
        d
    });
}

#[divan::bench(args = [10_000, 100_000], sample_count = 3)]
fn truncated_file(bencher: divan::Bencher, n: usize) {
    let new = rendered(n);
    // Cut in the middle of a line, as a full disk or a killed writer leaves it.
    let mut cut = new.len() / 2;
    while !new.is_char_boundary(cut) {
        cut -= 1;
    }
    let old = new[..cut].to_string();
    bencher.bench_local(|| masked_diff(&old, &new));
}
