//! How fast a real Asterisk 22 takes the ari target's pushes, by how many
//! extensions are in flight: the generated estate (`BENCH_N`, 3,000 by
//! default) rendered as the daemon renders it, pushed into an empty astdb
//! wizard (auth, aor, endpoint per extension, each answer verified:
//! `LiveTarget::push`, as a run does), then deleted again, once per
//! level of `BENCH_IN_FLIGHT` (default `1,4,8,16`). Beside each figure, the
//! CPU time Asterisk and this process used in it: a level that adds
//! throughput without Asterisk using more CPU per object was waiting on
//! latency; one where Asterisk's CPU is all of the wall time is CPU-bound.
//!
//! ```text
//! cargo bench --bench ari_push
//! BENCH_N=10000 BENCH_IN_FLIGHT=4,8 cargo bench --bench ari_push
//! ```
#[path = "support/mod.rs"]
mod support;

use asterisk_gitops::asterisk::ari::{Ari, AriConfig};
use asterisk_gitops::asterisk::ari_config::sections::{self, Section};
use asterisk_gitops::asterisk::ari_config::{LiveTarget, Pushed};
use asterisk_real::{Asterisk, Options};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// utime + stime of a process, in seconds (`/proc/PID/stat`, 100 ticks a second).
/// Runs one pass; with the CPU seconds Asterisk (`pid`) and this process
/// (`me`) spent during it.
async fn with_cpu<T>(pid: &str, me: &str, pass: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    let (a0, m0) = (cpu_seconds(pid), cpu_seconds(me));
    let out = pass.await;
    (out, cpu_seconds(pid) - a0, cpu_seconds(me) - m0)
}

fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // The command name may hold spaces: the fields after it follow the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // After ')': state is field 0, utime field 11, stime field 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// Pushes every extension of `groups` from `from` to `to` (an empty side:
/// create or delete), `in_flight` at once; the wall time, the requests,
/// and how many failed.
async fn push_all(
    target: &LiveTarget<Ari>,
    groups: &BTreeMap<String, Vec<Section>>,
    create: bool,
    in_flight: usize,
) -> (Duration, usize, usize) {
    let t = Instant::now();
    let results: Vec<Pushed> = futures_util::stream::iter(groups.iter())
        .map(|(id, g)| async move {
            match create {
                true => target.push(id, &[], g, false).await,
                false => target.push(id, g, &[], false).await,
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let mut requests = 0;
    let mut failed = 0;
    for r in results {
        match r {
            Pushed::Done { requests: n } => requests += n,
            Pushed::Failed { reason, .. } => {
                if failed == 0 {
                    eprintln!("  a push failed: {reason}");
                }
                failed += 1;
            }
        }
    }
    (t.elapsed(), requests, failed)
}

/// Asterisk's own ceiling: every object PUT (auths, then aors, then
/// endpoints, as a stream) or DELETEd (the other way round) with `in_flight`
/// requests at once and no order per extension; the wall time.
async fn raw_all(ari: &Ari, groups: &BTreeMap<String, Vec<Section>>, create: bool, in_flight: usize) -> Duration {
    let mut objects: Vec<(&str, &Section)> =
        groups.iter().flat_map(|(id, g)| g.iter().map(move |s| (id.as_str(), s))).collect();
    let rank = |k: &str| match k {
        "auth" => 0,
        "aor" => 1,
        _ => 2,
    };
    objects.sort_by_key(|(_, s)| rank(&s.kind));
    if !create {
        objects.reverse();
    }
    let t = Instant::now();
    let failed = futures_util::stream::iter(objects)
        .map(|(id, s)| async move {
            match create {
                true => ari.put_object(&s.kind, id, &s.fields).await.is_err(),
                false => ari.delete_object(&s.kind, id).await.is_err(),
            }
        })
        .buffer_unordered(in_flight)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    assert_eq!(failed, 0, "every raw request succeeds");
    t.elapsed()
}

fn main() {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let levels: Vec<usize> = std::env::var("BENCH_IN_FLIGHT")
        .unwrap_or_else(|_| "1,4,8,16".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let build = support::real_asterisk();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let ast = Asterisk::start(&build, Options::live("bench-ari-push").expect("sorcery snippet"))
            .await
            .expect("Asterisk starts");
        let pid = std::fs::read_to_string(ast.dir().join("run/asterisk.pid")).expect("pid file").trim().to_string();
        let dir = tempfile::tempdir().expect("tempdir");
        asterisk_gitops::estate::write(dir.path(), n).expect("estate");
        let desired = asterisk_gitops::reconcile::load_dir(dir.path());
        let renderer = asterisk_gitops::core::render::Renderer::new(None).expect("the built-in template");
        let rendered = renderer
            .render(&desired.set, &desired.source, &asterisk_gitops::secret::ProcessSecrets)
            .expect("renders");
        let groups = sections::by_id(sections::parse(&rendered).expect("the rendering reads as objects"));
        assert_eq!(groups.len(), n, "every extension renders");
        let objects: usize = groups.values().map(Vec::len).sum();
        let ari = Ari::new(AriConfig {
            url: ast.ari_url(),
            user: asterisk_real::ARI_USER.into(),
            password: asterisk_gitops::secret::SecretString::new(&ast.ari_password),
            app: "bench".into(),
            timeout: Duration::from_secs(60),
        })
        .expect("ARI client");
        let me = std::process::id().to_string();
        let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
        println!("load average at the start: {}", load());
        println!("{n} extensions, {objects} objects: raw PUTs, then DELETEs, no order per extension, per level:");
        for &k in &levels {
            for create in [true, false] {
                let (wall, a, m) = with_cpu(&pid, &me, raw_all(&ari, &groups, create, k)).await;
                let s = wall.as_secs_f64();
                println!(
                    "  {k:>2} in flight, {}: {s:.2} s, {:.0} requests/s; Asterisk CPU {a:.2} s ({:.0} % of one core), this process {m:.2} s",
                    if create { "PUT" } else { "DELETE" },
                    objects as f64 / s,
                    100.0 * a / s,
                );
            }
        }
        let target = LiveTarget::new(ari);
        println!("{n} extensions, {objects} objects, pushed into an empty astdb wizard and deleted, per level:");
        for &k in &levels {
            for create in [true, false] {
                let ((wall, requests, failed), a, m) =
                    with_cpu(&pid, &me, push_all(&target, &groups, create, k)).await;
                let s = wall.as_secs_f64();
                println!(
                    "  {k:>2} in flight, {}: {s:.2} s, {:.0} requests/s ({requests} requests, {failed} failed); Asterisk CPU {a:.2} s ({:.0} % of one core), this process {m:.2} s",
                    if create { "create" } else { "delete" },
                    requests as f64 / s,
                    100.0 * a / s,
                );
            }
        }
        println!("load average at the end: {}", load());
        drop(ast);
    });
}
