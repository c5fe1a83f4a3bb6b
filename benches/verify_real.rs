//! Verification after a reload, on a real Asterisk 22 (crates/asterisk-real)
//! holding an estate of N extensions (default 10,000): how long the
//! verifier takes to check every option the file sets — endpoint, auth (as
//! a digest) and aor — for 1, 100 and 1,000 changed extensions. Three runs
//! each; the median is printed.
//!
//!     cargo bench --bench verify_real                  # N=10000
//!     BENCH_N=1000 cargo bench --bench verify_real
#[path = "support/mod.rs"]
mod support;

use asterisk_gitops::asterisk::Asterisk as Client;
use asterisk_gitops::asterisk::ami::AmiConfig;
use asterisk_gitops::core::plan::{Action, Change, Plan};
use asterisk_gitops::core::render::{Renderer, SourceInfo};
use asterisk_gitops::core::spec::{self, LoadOptions};
use asterisk_gitops::reconcile::verify;
use asterisk_gitops::secret::{AuthCredential, ProcessSecrets, credential, md5_cred};
use asterisk_real::{Asterisk, Options};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let build = support::real_asterisk();
    let dir = tempfile::tempdir().expect("tempdir");
    asterisk_gitops::estate::write(dir.path(), n).expect("estate");
    let loaded = spec::load_paths(&[dir.path().to_path_buf()], &LoadOptions::for_dir(dir.path()));
    assert!(!loaded.has_errors(), "the estate is valid");
    let set = loaded.set;
    let text =
        Renderer::new(None).expect("template").render(&set, &SourceInfo::default(), &ProcessSecrets).expect("render");
    let md5s: BTreeMap<String, String> = set
        .extensions
        .iter()
        .map(|e| {
            let h = match credential(&**e, &ProcessSecrets).expect("credential") {
                AuthCredential::Md5(h) => h,
                AuthCredential::UserPass(p) => md5_cred(&e.extension, "asterisk", &p),
            };
            (e.extension.clone(), h)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut opts = Options::named("verify-bench");
        opts.managed = text;
        let ast = Asterisk::start(&build, opts).await.expect("Asterisk starts");
        let client = Client::new(AmiConfig {
            addr: ast.ami_addr().to_string(),
            user: asterisk_real::AMI_USER.into(),
            secret: ast.ami_secret.clone(),
            timeout: Duration::from_secs(60),
            events: false,
        });
        let last = (100_000 + n - 1).to_string();
        let started = Instant::now();
        while !matches!(client.endpoint(&last).await, Ok(Some(_))) {
            assert!(started.elapsed() < Duration::from_secs(300), "the estate did not load");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for k in [1usize, 100, 1000].into_iter().filter(|k| *k <= n) {
            let plan = Plan {
                changes: set.extensions[..k]
                    .iter()
                    .map(|e| Change {
                        extension: e.extension.clone(),
                        action: Action::Update,
                        fields: vec![],
                        profile: None,
                    })
                    .collect(),
                file_changed: true,
                ..Default::default()
            };
            let mut times = Vec::new();
            for _ in 0..3 {
                let t = Instant::now();
                let checked = verify(&client, &set, &plan, Some(&md5s)).await.expect("the estate verifies");
                times.push(t.elapsed());
                assert!(checked.starts_with("verified"), "{checked}");
            }
            times.sort();
            println!(
                "{n} extensions loaded, {k} changed: verification {:.1} ms (median of 3; runs {:?})",
                times[1].as_secs_f64() * 1000.0,
                times.iter().map(|t| format!("{:.1}", t.as_secs_f64() * 1000.0)).collect::<Vec<_>>()
            );
        }
        client.close().await;
    });
}
