//! Building the running program from [`Settings`]: the database, the
//! Asterisk port, the renderer, the reconciler, the HTTP state; and `serve`,
//! which runs the reconcile loop and the HTTP server until SIGINT/SIGTERM.

use crate::asterisk::managed::ManagedFile;
use crate::asterisk::target::Live;
use crate::asterisk::{AmiConfig, Asterisk};
use crate::config::Settings;
use crate::core::render::Renderer;
use crate::db::{Db, Retry};
use crate::git::writeback::{Author, Target, WriteBack};
use crate::http::{AppState, TokenEntry};
use crate::reconcile::{self, Backoff, BackoffConfig, DesiredSource, LoopConfig, LoopHandle, PruneGuard, Reconciler};
use crate::secret::ProcessSecrets;
use std::sync::Arc;
use std::time::Duration;

/// The daemon's reconciler: the database, AMI and, with `apply.target: ari`
/// or `realtime`, its live target.
pub type DaemonReconciler = Reconciler<Db, Asterisk, Live>;

/// The Asterisk port, when AMI is configured.
pub fn asterisk(settings: &Settings) -> Option<Asterisk> {
    settings.ami.as_ref().map(|a| {
        Asterisk::new(AmiConfig {
            addr: a.addr.clone(),
            user: a.user.clone(),
            secret: a.secret.expose().to_string(),
            timeout: a.timeout,
            events: false,
        })
    })
}

/// Builds the reconciler over an open database.
pub fn reconciler(settings: &Settings, db: Db) -> anyhow::Result<DaemonReconciler> {
    let renderer = Renderer::new(settings.templates.as_deref())?;
    // With the ari target the reconciler's file is the record of what was
    // pushed, in the state directory: Asterisk must not read it.
    let (managed_path, live) = match (settings.apply_target, &settings.ari) {
        (crate::config::ApplyTarget::Ari, Some(ari)) => (
            settings.state_dir.join(crate::asterisk::ari_config::RECORD_FILE),
            Some(Live::Ari(crate::asterisk::ari_config::LiveTarget::new(ari_client(ari)?))),
        ),
        (crate::config::ApplyTarget::Realtime, ari) => (
            settings.state_dir.join(crate::asterisk::realtime::RECORD_FILE),
            Some(Live::Realtime(realtime_target(settings, ari)?)),
        ),
        _ => (settings.managed_file.clone(), None),
    };
    let managed = ManagedFile::new(&managed_path).with_group(settings.managed_file_group);
    if let Ok(n) = managed.remove_stale_temporaries()
        && n > 0
    {
        tracing::info!(removed = n, "removed temporary files an interrupted write left behind");
    }
    Ok(Reconciler {
        store: db,
        asterisk: asterisk(settings),
        managed: Box::new(managed),
        renderer: Arc::new(renderer),
        secrets: Arc::new(ProcessSecrets),
        realm: settings.realm.clone(),
        prune: PruneGuard {
            max_share: settings.reconcile.prune_max_share,
            max_count: settings.reconcile.prune_max_count,
            allow_mass_delete: settings.reconcile.allow_mass_delete,
        },
        self_heal: settings.reconcile.self_heal,
        live,
        settled: Default::default(),
    })
}

/// The realtime target: its database (the URL is a secret: never printed)
/// and, with ARI configured, Asterisk's validation and view of its objects.
fn realtime_target(
    settings: &Settings,
    ari: &Option<crate::config::AriSettings>,
) -> anyhow::Result<crate::asterisk::realtime::RealtimeTarget> {
    let Some(url) = &settings.realtime_database_url else {
        anyhow::bail!("apply.target realtime without a realtime database URL");
    };
    let client = ari.as_ref().map(ari_client).transpose()?;
    Ok(crate::asterisk::realtime::RealtimeTarget::new(url, client)?)
}

/// Creates the state directory (database, git mirror, by default the
/// managed file) 0750 when it does not exist: the daemon's user writes,
/// its group (Asterisk, to read the managed file) may enter, nobody else.
/// An existing directory keeps the mode its owner gave it.
pub fn state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create the state directory {}: {e}", dir.display()))
}

/// Connects to the database for a one-shot command (a few quick retries).
pub async fn connect(settings: &Settings) -> anyhow::Result<Db> {
    let retry = Retry { attempts: 3, first_delay: Duration::from_millis(200), max_delay: Duration::from_secs(1) };
    Ok(Db::connect(&settings.database_url, &retry).await?)
}

/// API tokens (the admin token, and the configured users'), stored hashed.
pub fn tokens(settings: &Settings) -> Vec<TokenEntry> {
    let mut out: Vec<TokenEntry> = settings
        .admin_token
        .as_ref()
        .map(|t| TokenEntry::new(Author { name: "admin".into(), email: "admin@asterisk-gitops".into() }, t.expose()))
        .into_iter()
        .collect();
    out.extend(
        settings
            .users
            .iter()
            .map(|u| TokenEntry { user: Author { name: u.name.clone(), email: u.email.clone() }, sha256: u.sha256 }),
    );
    out
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Runs the daemon until `shutdown` resolves, listening on `settings.listen`.
pub async fn serve(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    run(settings, listener, shutdown).await
}

/// Runs the daemon on an already bound listener until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    state_dir(&settings.state_dir)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // The database may not be up yet: keep trying (with back-off) until it
    // is, or until asked to stop. No crash loop.
    let db = {
        let retry = Retry { attempts: 1, ..Retry::default() };
        let mut backoff = Backoff::new(BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30)));
        loop {
            match Db::connect(&settings.database_url, &retry).await {
                Ok(db) => break db,
                Err(e @ (crate::db::DbError::TooNew { .. } | crate::db::DbError::Unsupported(_))) => {
                    return Err(e.into());
                }
                Err(e) => {
                    let delay = backoff.fail();
                    tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable at start-up");
                    tokio::select! {
                        _ = stopped(stop_rx.clone()) => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    };
    let reconciler = Arc::new(reconciler(&settings, db.clone())?);
    if let Some(rt) = reconciler.live.as_ref().and_then(Live::realtime) {
        // At start: the tables must exist (each run checks the columns it writes).
        match rt.store().schema().await {
            Ok(_) => tracing::info!("the realtime tables are there"),
            Err(e) => tracing::error!(error = %e, "the realtime target cannot write yet"),
        }
    }
    hand_over(&settings, &reconciler).await;
    let (source, target, interval) = match &settings.git {
        None => {
            std::fs::create_dir_all(&settings.spec_dir).ok();
            (
                DesiredSource::Dir(Arc::new(reconcile::DirSource::with_secrets(
                    settings.spec_dir.clone(),
                    settings.secrets.clone(),
                ))),
                Target::Dir(settings.spec_dir.clone()),
                settings.reconcile.interval,
            )
        }
        Some(g) => {
            let mirror = crate::git::GitSource::open(crate::git::GitSourceConfig {
                url: g.url.clone(),
                branch: g.branch.clone(),
                path: g.path.clone(),
                mirror_dir: settings.state_dir.join("git/mirror"),
                token: g.token.clone(),
                ssh_key: g.ssh_key.clone(),
            })?
            .with_secrets(settings.secrets.clone());
            let target = Target::Remote(crate::git::writeback::RemoteTarget {
                url: g.url.clone(),
                branch: g.branch.clone(),
                path: g.path.clone(),
                work_dir: settings.state_dir.join("git/work"),
                mode: if g.review { crate::git::writeback::Mode::Review } else { crate::git::writeback::Mode::Direct },
                committer: Author { name: g.committer_name.clone(), email: g.committer_email.clone() },
                token: g.token.clone(),
                ssh_key: g.ssh_key.clone(),
                before_push: None,
            });
            let source = DesiredSource::Git(Arc::new(std::sync::Mutex::new(mirror)));
            (source, target, settings.reconcile.interval.min(g.interval))
        }
    };

    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handle = LoopHandle { triggers: tx.clone(), last: Default::default(), failures: Default::default() };
    let _watcher = match &settings.git {
        Some(_) => None,
        None => match reconcile::watch(&settings.spec_dir, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, dir = %settings.spec_dir.display(), "cannot watch the spec directory; relying on the periodic resync");
                None
            }
        },
    };
    let loop_cfg = LoopConfig { interval, debounce: settings.reconcile.debounce, ..LoopConfig::default() };

    let live = crate::http::Live {
        db: Some(db.clone()),
        asterisk: asterisk(&settings).map(Arc::new),
        registrations: Default::default(),
        calls: (settings.call_log != crate::config::CallSource::Off)
            .then(|| Arc::new(crate::calls::CallLogStats::default())),
        sessions: Default::default(),
        sip_server: settings.sip_server.clone(),
    };
    let refresher = live
        .asterisk
        .clone()
        .map(|a| tokio::spawn(refresh_registrations(a, live.registrations.clone(), stopped(stop_rx.clone()))));
    // The options this Asterisk knows, learnt through ARI and cached per
    // version, replace the committed Asterisk 22 catalogue once known.
    let learner = match (&settings.ari, &live.asterisk) {
        (Some(ari), Some(ami)) => {
            let client = ari_client(ari)?;
            Some(tokio::spawn(learn_catalogue(
                client,
                ami.clone(),
                reconciler.renderer.clone(),
                settings.state_dir.join("catalogue"),
                stopped(stop_rx.clone()),
            )))
        }
        _ => None,
    };
    let call_logger = match (settings.call_log, &live.calls) {
        (crate::config::CallSource::Stasis, Some(stats)) => match &settings.ari {
            Some(ari) => {
                let client = ari_client(ari)?;
                Some(tokio::spawn(crate::calls::run(
                    db.clone(),
                    client,
                    ari.calls.clone(),
                    stats.clone(),
                    stop_rx.clone(),
                )))
            }
            None => None,
        },
        (crate::config::CallSource::Cel, Some(stats)) => match &settings.ami {
            Some(a) => {
                let ami = AmiConfig {
                    addr: a.addr.clone(),
                    user: a.user.clone(),
                    secret: a.secret.expose().to_string(),
                    timeout: a.timeout,
                    events: false,
                };
                Some(tokio::spawn(crate::calls::cel::run(
                    db.clone(),
                    ami,
                    settings.calls.clone(),
                    stats.clone(),
                    stop_rx.clone(),
                )))
            }
            None => None,
        },
        _ => None,
    };
    // With CEL logging every call, the Stasis app (when ARI is configured)
    // only hands calls that enter Stasis() back to the dialplan, so they
    // are not logged twice and never stay stuck in Stasis.
    let stasis_passthrough = match (settings.call_log, &settings.ari) {
        (crate::config::CallSource::Cel, Some(ari)) => {
            let client = ari_client(ari)?;
            let cfg = crate::calls::CallLogConfig { record: false, ..ari.calls.clone() };
            Some(tokio::spawn(crate::calls::run(
                db.clone(),
                client,
                cfg,
                Arc::new(crate::calls::CallLogStats::default()),
                stop_rx.clone(),
            )))
        }
        _ => None,
    };
    let state = AppState {
        spec_dir: settings.spec_dir.clone(),
        writeback: Arc::new(match &source {
            DesiredSource::Dir(dir) => WriteBack::new(target, settings.secrets.clone()).with_cache(dir.clone()),
            DesiredSource::Git(_) => WriteBack::new(target, settings.secrets.clone()),
        }),
        realm: settings.realm.clone(),
        tokens: Arc::new(tokens(&settings)),
        webhook_secret: settings.webhook_secret.clone(),
        branch: settings.git.as_ref().map(|g| g.branch.clone()),
        reconcile: Some(handle.clone()),
        read_only: settings.read_only,
        anonymous_read: settings.anonymous_read,
        live,
    };
    let listen = listener.local_addr()?;

    tracing::info!(
        listen = %listen,
        ui = %format!("http://{listen}/ui"),
        specs = %settings.git.as_ref().map(|g| format!("git {} ({}:{})", crate::secret::redact_url(&g.url), g.branch, g.path)).unwrap_or_else(|| settings.spec_dir.display().to_string()),
        managed_file = %settings.managed_file.display(),
        database = %settings.database_url_redacted(),
        asterisk = %settings.ami.as_ref().map(|a| format!("AMI {} as {}", a.addr, a.user)).unwrap_or_else(|| "not configured".into()),
        call_log = %match (settings.call_log, &settings.ari, &settings.ami) {
            (crate::config::CallSource::Cel, _, Some(a)) => format!("every call, from CEL over AMI {}", a.addr),
            (crate::config::CallSource::Stasis, Some(a), _) => format!("Stasis calls, ARI {} app {}", crate::secret::redact_url(&a.url), a.app),
            _ => "off (no AMI or ARI configured)".into(),
        },
        read_only = settings.read_only,
        writes = if state.tokens.is_empty() { "disabled (no ASTERISK_GITOPS_ADMIN_TOKEN)" } else { "token required" },
        "asterisk-gitops is running"
    );

    // The ari target on a large estate: its pushed objects are read back in
    // the background, not by every run (`asterisk::ari_config::sweep`).
    let sweeper = reconciler.live.as_ref().and_then(Live::ari).is_some().then(|| {
        let (rec, triggers, stop) = (reconciler.clone(), handle.triggers.clone(), stopped(stop_rx.clone()));
        tokio::spawn(async move {
            if let Some(live) = rec.live.as_ref().and_then(Live::ari) {
                let wake = || {
                    let _ = triggers.try_send(reconcile::Trigger::Drift);
                };
                crate::asterisk::ari_config::sweep::sweep(live, rec.asterisk.as_ref(), Default::default(), wake, stop)
                    .await;
            }
        })
    });
    let http = axum::serve(listener, crate::http::app(state)).with_graceful_shutdown(stopped(stop_rx.clone()));
    let looped = reconcile::run_loop(reconciler.clone(), source, loop_cfg, handle, rx, stopped(stop_rx.clone()));
    let (http_result, ()) = tokio::join!(http, looped);
    for task in [refresher, call_logger, stasis_passthrough, learner, sweeper].into_iter().flatten() {
        let _ = task.await;
    }
    if let Some(a) = &reconciler.asterisk {
        a.close().await;
    }
    db.close().await;
    tracing::info!("asterisk-gitops stopped");
    http_result.map_err(Into::into)
}

/// Hands a running installation over between the apply targets before the
/// first run (`asterisk::ari_config::handover`): with `ari`, the extensions
/// the managed file still defines move into the astdb wizard; with `file`,
/// what the record says was pushed moves back into the managed file. What it
/// did is recorded as a run of its own (trigger `startup`, no plan).
pub async fn hand_over(settings: &Settings, reconciler: &DaemonReconciler) {
    use crate::asterisk::ari_config::{RECORD_FILE, handover};
    let (Some(ami), Some(ari)) = (&reconciler.asterisk, &settings.ari) else { return };
    let started_at = chrono::Utc::now();
    let done = match (settings.apply_target, &reconciler.live) {
        (crate::config::ApplyTarget::Ari, Some(Live::Ari(live))) => {
            let managed = ManagedFile::new(&settings.managed_file).with_group(settings.managed_file_group);
            handover::to_ari(ami, &live.client, &managed, reconciler.managed.as_ref()).await
        }
        (crate::config::ApplyTarget::File, _) => {
            let client = match ari_client(ari) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "no ARI client: no hand-over from the ari target checked");
                    return;
                }
            };
            let record = ManagedFile::new(settings.state_dir.join(RECORD_FILE));
            handover::to_file(ami, &client, reconciler.managed.as_ref(), &record).await
        }
        _ => return,
    };
    let (outcome, error, reasons, reloaded) = match done {
        Ok(None) => return,
        Ok(Some(h)) => {
            let error = (!h.failures.is_empty())
                .then(|| h.failures.iter().map(|(id, why)| format!("{id}: {why}")).collect::<Vec<_>>().join("; "));
            tracing::info!(
                direction = h.direction,
                handed = h.handed.len(),
                failed = h.failures.len(),
                reloaded = h.reloaded,
                "hand-over between the apply targets"
            );
            let outcome = if error.is_none() { reconcile::Outcome::Applied } else { reconcile::Outcome::Failed };
            (outcome, error, h.reasons, h.reloaded)
        }
        Err(e) => {
            tracing::error!(error = %e, "the hand-over between the apply targets could not start");
            (reconcile::Outcome::Failed, Some(e.to_string()), vec![format!("hand-over not done: {e}")], false)
        }
    };
    let run = reconcile::RunRecord {
        trigger: reconcile::Trigger::Startup,
        revision: None,
        subject: None,
        started_at,
        finished_at: chrono::Utc::now(),
        outcome,
        plan: None,
        error,
        diagnostics: Vec::new(),
        reloaded,
        warning: None,
        reasons,
        rollback_failed: false,
    };
    use crate::reconcile::StateStore as _;
    if let Err(e) = reconciler.store.commit(&run, &[], &[], &Default::default()).await {
        tracing::error!(error = %e, "could not record the hand-over");
    }
}

/// An ARI client for the configured Asterisk (the call logger and the
/// catalogue learner each have their own).
fn ari_client(ari: &crate::config::AriSettings) -> anyhow::Result<crate::asterisk::ari::Ari> {
    Ok(crate::asterisk::ari::Ari::new(crate::asterisk::ari::AriConfig {
        url: ari.url.clone(),
        user: ari.user.clone(),
        password: ari.password.clone(),
        app: ari.app.clone(),
        timeout: ari.timeout,
    })?)
}

/// Learns the option catalogue of the Asterisk the daemon talks to and
/// hands it to the renderer: from `dir/asterisk-<version>.txt` when an
/// earlier start cached it, else from ARI's dynamic configuration of one
/// endpoint, its aor and its auth (so Asterisk must hold one: until then it
/// looks again every 5 s, and every 30 s while Asterisk cannot be asked;
/// meanwhile the committed Asterisk 22 catalogue holds).
pub async fn learn_catalogue(
    ari: crate::asterisk::ari::Ari,
    ami: Arc<Asterisk>,
    renderer: Arc<Renderer>,
    dir: std::path::PathBuf,
    stop: impl std::future::Future<Output = ()>,
) {
    let work = async {
        loop {
            match learn_once(&ari, &ami, &dir).await {
                Ok(Some((version, catalogue, path))) => {
                    let unknown = renderer.use_catalogue(Arc::new(catalogue));
                    if unknown.is_empty() {
                        tracing::info!(%version, catalogue = %path.display(), "checking option names against this Asterisk's catalogue");
                    } else {
                        let first = unknown.first().map(|d| d.message.clone()).unwrap_or_default();
                        tracing::error!(%version, problems = unknown.len(), first = %first, "the template writes options this Asterisk does not know: nothing is written until it is fixed");
                    }
                    return;
                }
                Ok(None) => {
                    tracing::debug!("no endpoint in Asterisk yet to learn its option catalogue from");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "learning Asterisk's option catalogue failed; will try again");
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    };
    tokio::select! {
        _ = stop => {}
        _ = work => {}
    }
}

async fn learn_once(
    ari: &crate::asterisk::ari::Ari,
    ami: &Asterisk,
    dir: &std::path::Path,
) -> anyhow::Result<Option<(String, crate::core::catalogue::Catalogue, std::path::PathBuf)>> {
    let version = ari.info().await?.system.version;
    let safe: String =
        version.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' }).collect();
    let path = dir.join(format!("asterisk-{safe}.txt"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(Some((version, crate::core::catalogue::Catalogue::parse(&text), path)));
    }
    let Some(first) = ami.endpoints().await?.into_iter().next() else { return Ok(None) };
    let Some(detail) = ami.endpoint(&first.name).await? else { return Ok(None) };
    let first_of = |list: &str| list.split(',').map(str::trim).find(|s| !s.is_empty()).map(str::to_string);
    let (Some(aor), Some(auth)) = (first_of(&detail.aors), first_of(&detail.auth)) else { return Ok(None) };
    let mut listed = std::collections::BTreeMap::new();
    for (kind, id) in [("endpoint", first.name.as_str()), ("aor", aor.as_str()), ("auth", auth.as_str())] {
        listed.insert(kind.to_string(), ari.option_names(kind, id).await?);
    }
    let catalogue = crate::core::catalogue::Catalogue::from_listed(&listed);
    std::fs::create_dir_all(dir)?;
    let header = format!(
        "Option names Asterisk {version} knows for res_pjsip endpoints, aors and auths,\n\
         learnt by asterisk-gitops through ARI's dynamic configuration; delete to learn again."
    );
    crate::asterisk::managed::write_atomic(&path, catalogue.to_text(&header).as_bytes())?;
    Ok(Some((version, catalogue, path)))
}

/// Reads the registrations every 10 s for the read routes (so a list of
/// 10k extensions never waits on AMI); a failed read keeps the last
/// snapshot's age and says why.
pub async fn refresh_registrations(
    asterisk: Arc<Asterisk>,
    into: Arc<std::sync::RwLock<crate::http::read::Registrations>>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let update = match asterisk.contacts().await {
            Ok(contacts) => {
                let mut by: std::collections::BTreeMap<String, Vec<crate::asterisk::Contact>> = Default::default();
                for c in contacts {
                    by.entry(c.endpoint.clone()).or_default().push(c);
                }
                crate::http::read::Registrations {
                    read_at: Some(chrono::Utc::now()),
                    by_endpoint: Arc::new(by),
                    error: None,
                }
            }
            Err(e) => {
                let mut last = into.read().map(|r| r.clone()).unwrap_or_default();
                last.error = Some(e.to_string());
                last
            }
        };
        if let Ok(mut w) = into.write() {
            *w = update;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
    asterisk.close().await;
}
