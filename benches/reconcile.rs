//! The reconcile loop at 10k extensions: a no-op run, a run with one changed
//! extension, and a cold full apply — without Asterisk (its reload is not
//! ours to measure: a real one takes 2–5 s for 10k endpoints) and with the
//! stand-in (AMI list, reload of the stand-in, verification).
//!
//!     cargo bench --bench reconcile

use asterisk_gitops::asterisk::managed::ManagedFile;
use asterisk_gitops::asterisk::{AmiConfig, Asterisk};
use asterisk_gitops::core::render::Renderer;
use asterisk_gitops::db::{Db, Retry};
use asterisk_gitops::reconcile::{DirSource, load_dir};
use asterisk_gitops::reconcile::{Outcome, PruneGuard, Reconciler, Trigger};
use asterisk_gitops::secret::ProcessSecrets;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    divan::main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

fn reconciler(rt: &tokio::runtime::Runtime, dir: &Path, asterisk: Option<Asterisk>) -> Reconciler<Db, Asterisk> {
    let url = format!("sqlite://{}/state/db.sqlite", dir.display());
    let db = rt.block_on(Db::connect(&url, &Retry::default())).expect("db");
    Reconciler {
        store: db,
        asterisk,
        managed: Box::new(ManagedFile::new(dir.join("asterisk/pjsip_gitops.conf"))),
        renderer: Arc::new(Renderer::new(None).expect("template")),
        secrets: Arc::new(ProcessSecrets),
        realm: "asterisk".into(),
        prune: PruneGuard { max_share: 0.3, max_count: None, allow_mass_delete: false },
        self_heal: true,
        live: None,
        settled: Default::default(),
        beside: None,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    spec: std::path::PathBuf,
    /// As the daemon reads the directory: the last load is reused when no file changed.
    source: DirSource,
    rec: Reconciler<Db, Asterisk>,
    _standin: Option<asterisk_standin::StandIn>,
}

fn setup(rt: &tokio::runtime::Runtime, n: usize, with_asterisk: bool) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("extensions.d");
    asterisk_gitops::estate::write(&spec, n).expect("estate");
    std::fs::create_dir_all(dir.path().join("asterisk")).expect("mkdir");
    let (standin, asterisk) = if with_asterisk {
        let conf =
            asterisk_standin::write_operator_conf(&dir.path().join("asterisk"), "pjsip_gitops.conf").expect("conf");
        let s = rt
            .block_on(asterisk_standin::StandIn::start(asterisk_standin::StandInConfig {
                pjsip_conf: conf,
                user: "u".into(),
                secret: "s".into(),
            }))
            .expect("stand-in");
        let a = Asterisk::new(AmiConfig {
            addr: s.ami_addr.to_string(),
            user: "u".into(),
            secret: "s".into(),
            timeout: Duration::from_secs(30),
            events: false,
        });
        (Some(s), Some(a))
    } else {
        (None, None)
    };
    let rec = reconciler(rt, dir.path(), asterisk);
    Setup { _dir: dir, source: DirSource::new(spec.clone()), spec, rec, _standin: standin }
}

#[divan::bench(args = [false, true], sample_count = 10)]
fn noop_10k(bencher: divan::Bencher, with_asterisk: bool) {
    let rt = runtime();
    let s = setup(&rt, 10_000, with_asterisk);
    let first = rt.block_on(s.rec.run(Trigger::Cli, s.source.load()));
    assert_eq!(first.record.outcome, Outcome::Applied, "{:?}", first.record.error);
    bencher.bench_local(|| {
        let r = rt.block_on(s.rec.run(Trigger::Periodic, s.source.load()));
        assert_eq!(r.record.outcome, Outcome::NoOp);
    });
}

#[divan::bench(args = [false, true], sample_count = 10)]
fn one_change_10k(bencher: divan::Bencher, with_asterisk: bool) {
    let rt = runtime();
    let s = setup(&rt, 10_000, with_asterisk);
    rt.block_on(s.rec.run(Trigger::Cli, load_dir(&s.spec)));
    let file = s.spec.join("sales/0000.yaml");
    let original = std::fs::read_to_string(&file).expect("read");
    let mut flip = false;
    bencher.bench_local(|| {
        flip = !flip;
        let text = if flip { original.replacen("Agent 100000", "Agent 100000 (moved)", 1) } else { original.clone() };
        std::fs::write(&file, text).expect("write");
        let r = rt.block_on(s.rec.run(Trigger::FileChange, s.source.load()));
        assert_eq!(r.record.outcome, Outcome::Applied, "{:?}", r.record.error);
    });
}

#[divan::bench(sample_count = 5)]
fn cold_apply_10k_without_asterisk(bencher: divan::Bencher) {
    let rt = runtime();
    bencher.with_inputs(|| setup(&rt, 10_000, false)).bench_local_values(|s| {
        let r = rt.block_on(s.rec.run(Trigger::Cli, load_dir(&s.spec)));
        assert_eq!(r.record.outcome, Outcome::Applied);
        s
    });
}
