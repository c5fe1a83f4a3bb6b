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

/// The Asterisk port, when AMI is configured (the first node's with `nodes:`).
pub fn asterisk(settings: &Settings) -> Option<Asterisk> {
    settings.ami.as_ref().map(node_asterisk)
}

/// The Asterisk port of one AMI.
pub fn node_asterisk(a: &crate::config::AmiSettings) -> Asterisk {
    Asterisk::new(ami_config(a))
}

/// The AMI client settings of one configured AMI (no events: the CEL logger
/// asks for its own).
fn ami_config(a: &crate::config::AmiSettings) -> AmiConfig {
    AmiConfig {
        addr: a.addr.clone(),
        user: a.user.clone(),
        secret: a.secret.expose().to_string(),
        timeout: a.timeout,
        events: false,
    }
}

/// The nodes after the first (`nodes:`), each with a reconciler of its
/// own that follows the lead's runs (`reconcile::fleet`): its AMI, its
/// managed file, or with the ari target its ARI and its record under its
/// state directory. The renderer is the lead's (one catalogue).
pub fn fleet<S: reconcile::StateStore>(
    settings: &Settings,
    lead: &Reconciler<S, Asterisk, Live>,
    applies: reconcile::fleet::NodeApplies,
) -> anyhow::Result<reconcile::fleet::Fleet<Asterisk, Live>> {
    let mut followers = Vec::new();
    // With the realtime target one commit serves every node: the others
    // (they read the same tables) are only verified, through their AMI, and
    // their reconcilers never run (`reconcile::fleet`).
    let shared_tables = settings.apply_target == crate::config::ApplyTarget::Realtime;
    for node in settings.nodes.get(1..).unwrap_or_default() {
        let (managed_path, live) = match (settings.apply_target, &node.ari) {
            (crate::config::ApplyTarget::Realtime, _) => (node.managed_file.clone(), None),
            (crate::config::ApplyTarget::Ari, Some(ari)) => {
                state_dir(&node.state_dir)?;
                (
                    node.state_dir.join(crate::asterisk::ari_config::RECORD_FILE),
                    Some(Live::Ari(crate::asterisk::ari_config::LiveTarget::new(ari_client(ari)?))),
                )
            }
            _ => {
                if let Some(dir) = node.managed_file.parent().filter(|d| !d.as_os_str().is_empty()) {
                    state_dir(dir)?;
                }
                (node.managed_file.clone(), None)
            }
        };
        let managed = ManagedFile::new(&managed_path).with_group(settings.managed_file_group);
        followers.push(reconcile::fleet::Follower {
            name: node.name.clone(),
            reconciler: Reconciler {
                store: Default::default(),
                asterisk: Some(node_asterisk(&node.ami)),
                managed: Box::new(managed),
                renderer: lead.renderer.clone(),
                secrets: lead.secrets.clone(),
                realm: settings.realm.clone(),
                prune: lead.prune.clone(),
                self_heal: settings.reconcile.self_heal,
                live,
                settled: Default::default(),
                beside: None,
            },
        });
    }
    let lead_name = settings.nodes.first().map(|n| n.name.clone()).unwrap_or_else(|| "default".into());
    // A connection of its own to the first node, opened only when its run
    // committed without reaching it (shared tables).
    let lead_asterisk = settings.nodes.first().filter(|_| shared_tables).map(|n| node_asterisk(&n.ami));
    Ok(reconcile::fleet::Fleet::new(lead_name, followers, applies, shared_tables, lead_asterisk))
}

/// Builds the reconciler over an open database.
pub fn reconciler(settings: &Settings, db: Db) -> anyhow::Result<DaemonReconciler> {
    reconciler_on(settings, db, Arc::new(Renderer::new(settings.templates.as_deref())?))
}

/// Builds a reconciler over `store` with `renderer` (`serve` builds one per
/// leadership term, over the fenced store, sharing the renderer the
/// catalogue learner updates).
pub fn reconciler_on<S: reconcile::StateStore>(
    settings: &Settings,
    store: S,
    renderer: Arc<Renderer>,
) -> anyhow::Result<Reconciler<S, Asterisk, Live>> {
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
        store,
        asterisk: asterisk(settings),
        managed: Box::new(managed),
        renderer,
        secrets: Arc::new(ProcessSecrets),
        realm: settings.realm.clone(),
        prune: PruneGuard {
            max_share: settings.reconcile.prune_max_share,
            max_count: settings.reconcile.prune_max_count,
            allow_mass_delete: settings.reconcile.allow_mass_delete,
        },
        self_heal: settings.reconcile.self_heal,
        beside: matches!(live, Some(Live::Realtime(_))).then(|| beside_list(settings)).flatten(),
        live,
        settled: Default::default(),
    })
}

/// With the realtime target: Asterisk's endpoint list read beside the loop
/// (a large estate's list, one realtime query per endpoint), on an AMI
/// connection of its own so that it waits behind no run.
fn beside_list(settings: &Settings) -> Option<reconcile::run::BesideList> {
    let ami = Arc::new(asterisk(settings)?);
    Some(reconcile::run::BesideList::new(move || {
        let ami = ami.clone();
        Box::pin(async move { crate::reconcile::AsteriskControl::endpoints(&*ami).await.map_err(|e| e.to_string()) })
    }))
}

/// The realtime target: its database (the URL is a secret: never printed)
/// and the nodes that read it, with the ARI of each that offers one, for
/// Asterisk's validation and view of its objects (`ari` without `nodes:`).
fn realtime_target(
    settings: &Settings,
    ari: &Option<crate::config::AriSettings>,
) -> anyhow::Result<crate::asterisk::realtime::RealtimeTarget> {
    let Some(url) = &settings.realtime_database_url else {
        anyhow::bail!("apply.target realtime without a realtime database URL");
    };
    let mut nodes = Vec::new();
    for node in &settings.nodes {
        nodes.push((node.name.clone(), node.ari.as_ref().map(ari_client).transpose()?));
    }
    if nodes.is_empty() {
        nodes.push(("default".to_string(), ari.as_ref().map(ari_client).transpose()?));
    }
    Ok(crate::asterisk::realtime::RealtimeTarget::new(url, nodes)?)
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
    // Built once: a bad template stops the start here, on every replica;
    // each leadership term's reconciler shares it (and what it learns).
    let renderer = Arc::new(Renderer::new(settings.templates.as_deref())?);
    if let (crate::config::ApplyTarget::Ari, Some(ari)) = (settings.apply_target, &settings.ari) {
        ari_client(ari)?;
    }
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

    let listen = listener.local_addr()?;
    let (role_tx, role_rx) = tokio::sync::watch::channel(crate::db::leader::Role::Follower);
    let live = crate::http::Live {
        leader: Some(role_rx.clone()),
        db: Some(db.clone()),
        asterisk: asterisk(&settings).map(Arc::new),
        registrations: Default::default(),
        calls: (settings.call_log != crate::config::CallSource::Off)
            .then(|| Arc::new(crate::calls::CallLogStats::default())),
        sessions: Default::default(),
        sip_server: settings.sip_server.clone(),
        nodes: Default::default(),
        applies: Default::default(),
    };
    // Every node, the first one the lead's own connection and snapshot.
    let nodes: Vec<crate::http::NodeLive> = settings
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match (i, &live.asterisk) {
            (0, Some(a)) => crate::http::NodeLive {
                name: n.name.clone(),
                asterisk: a.clone(),
                registrations: live.registrations.clone(),
                calls: live.calls.clone(),
            },
            _ => crate::http::NodeLive {
                name: n.name.clone(),
                asterisk: Arc::new(node_asterisk(&n.ami)),
                registrations: Default::default(),
                calls: live.calls.as_ref().map(|_| Arc::default()),
            },
        })
        .collect();
    let live = crate::http::Live { nodes: Arc::new(nodes), ..live };
    // One refresher per node: a node that does not answer never holds the others' back.
    let refreshers: Vec<_> = live
        .nodes
        .iter()
        .map(|n| {
            tokio::spawn(refresh_registrations(n.asterisk.clone(), n.registrations.clone(), stopped(stop_rx.clone())))
        })
        .collect();
    // The options this Asterisk knows, learnt through ARI and cached per
    // version, replace the committed Asterisk 22 catalogue once known.
    let learner = match (&settings.ari, &live.asterisk) {
        (Some(ari), Some(ami)) => {
            let client = ari_client(ari)?;
            Some(tokio::spawn(learn_catalogue(
                client,
                ami.clone(),
                renderer.clone(),
                settings.state_dir.join("catalogue"),
                stopped(stop_rx.clone()),
            )))
        }
        _ => None,
    };
    let live_calls = live.calls.clone();
    if let DesiredSource::Dir(dir) = &source {
        let dir = dir.path.clone();
        tokio::task::spawn_blocking(move || crate::git::writeback::warm_up(&dir));
    }
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
    let instance_id = settings.instance_id.clone().unwrap_or_else(|| crate::db::leader::default_instance_id(&listen));

    tracing::info!(
        listen = %listen,
        instance = %instance_id,
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

    // The lock is released only once the leader's work has ended (below):
    // a standby must not start while this replica's last run finishes.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let election = tokio::spawn(crate::db::leader::elect(
        db.clone(),
        settings.database_url.clone(),
        instance_id,
        role_tx,
        stopped(release_rx),
    ));
    let leading = Leading {
        settings: settings.clone(),
        db: db.clone(),
        renderer,
        source,
        loop_cfg,
        handle,
        calls: live_calls,
        nodes: state.live.nodes.clone(),
        applies: state.live.applies.clone(),
    };
    let http = axum::serve(listener, crate::http::app(state)).with_graceful_shutdown(stopped(stop_rx.clone()));
    let led = lead(leading, role_rx, rx, stopped(stop_rx.clone()));
    let (http_result, ()) = tokio::join!(http, led);
    let _ = release_tx.send(true);
    let _ = election.await;
    for task in refreshers.into_iter().chain(learner) {
        let _ = task.await;
    }
    db.close().await;
    tracing::info!("asterisk-gitops stopped");
    http_result.map_err(Into::into)
}

/// What a leadership term needs to start the leader's work.
struct Leading {
    settings: Settings,
    db: Db,
    renderer: Arc<Renderer>,
    source: DesiredSource,
    loop_cfg: LoopConfig,
    handle: LoopHandle,
    calls: Option<Arc<crate::calls::CallLogStats>>,
    /// Every node, with its call logger's counters.
    nodes: Arc<Vec<crate::http::NodeLive>>,
    /// Where every node's last run is told (`/status`'s `nodes`).
    applies: reconcile::fleet::NodeApplies,
}

/// The leader's work while this replica leads in `epoch`: the hand-over
/// and the reconcile loop (one task), the call loggers, the ari target's
/// sweeper, and the listener for the followers' run requests.
struct Term {
    epoch: i64,
    triggers: tokio::sync::mpsc::Sender<reconcile::Trigger>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    reconciler: Arc<Reconciler<crate::db::leader::Fenced, Asterisk, Live>>,
    /// The nodes after the first (`nodes:`), applied to after each run.
    fleet: Arc<reconcile::fleet::Fleet<Asterisk, Live>>,
}

impl Term {
    /// Ends the term. `at_once` (leadership lost): every task is aborted
    /// where it stands, the run under way included, so nothing more is
    /// written as leader; otherwise (shutdown) the run under way finishes.
    async fn end(self, at_once: bool) {
        let _ = self.stop.send(true);
        if at_once {
            for t in &self.tasks {
                t.abort();
            }
        }
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(a) = &self.reconciler.asterisk {
            a.close().await;
        }
        for f in &self.fleet.followers {
            if let Some(a) = &f.reconciler.asterisk {
                a.close().await;
            }
        }
    }
}

/// Follows this replica's role until `shutdown`: starts the leader's work
/// when it takes the lead, ends it at once when it loses it. Triggers (the
/// spec watcher, API writes, webhooks, `POST /reconcile`) go to the term's
/// reconcile loop; on a follower, a write's or webhook's is passed to the
/// leader through the database (`db::leader`), and a file change is the
/// leader's own watcher's to see.
async fn lead(
    leading: Leading,
    mut role: tokio::sync::watch::Receiver<crate::db::leader::Role>,
    mut triggers: tokio::sync::mpsc::Receiver<reconcile::Trigger>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use crate::db::leader::Role;
    tokio::pin!(shutdown);
    let mut term: Option<Term> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = role.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *role.borrow_and_update();
                match now {
                    Role::Leader { epoch } if term.as_ref().map(|t| t.epoch) != Some(epoch) => {
                        if let Some(old) = term.take() {
                            old.end(true).await;
                        }
                        term = start_term(&leading, epoch, role.clone());
                    }
                    Role::Leader { .. } => {}
                    Role::Follower => {
                        if let Some(old) = term.take() {
                            tracing::warn!(epoch = old.epoch, "no longer the leader: the run under way and the call loggers stop");
                            old.end(true).await;
                        }
                    }
                }
            }
            t = triggers.recv() => match (t, &term) {
                (None, _) => break,
                (Some(t), Some(term)) => {
                    let _ = term.triggers.try_send(t);
                }
                (Some(t @ (reconcile::Trigger::Manual | reconcile::Trigger::Webhook)), None) => {
                    if let Err(e) = leading.db.notify_leader(t.as_str()).await {
                        tracing::warn!(error = %e, "cannot ask the leader for a run; it will see the change at its next resync");
                    }
                }
                (Some(_), None) => {}
            },
        }
    }
    if let Some(t) = term.take() {
        t.end(false).await;
    }
}

/// Starts the leader's work for `epoch`; `None` (logged) when its
/// reconciler cannot be built.
fn start_term(
    leading: &Leading,
    epoch: i64,
    role: tokio::sync::watch::Receiver<crate::db::leader::Role>,
) -> Option<Term> {
    let settings = &leading.settings;
    let store = crate::db::leader::Fenced::new(leading.db.clone(), epoch, role);
    let reconciler = match reconciler_on(settings, store, leading.renderer.clone()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            tracing::error!(epoch, error = %e, "leading, but the reconciler cannot be built: nothing is reconciled");
            return None;
        }
    };
    let fleet = match fleet(settings, &reconciler, leading.applies.clone()) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            tracing::error!(epoch, error = %e, "leading, but the other nodes' reconcilers cannot be built: nothing is reconciled");
            return None;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut tasks = Vec::new();
    {
        let (rec, fleet, settings, source, cfg, handle, stop) = (
            reconciler.clone(),
            fleet.clone(),
            settings.clone(),
            leading.source.clone(),
            leading.loop_cfg.clone(),
            leading.handle.clone(),
            stopped(stop_rx.clone()),
        );
        tasks.push(tokio::spawn(async move {
            if let Some(rt) = rec.live.as_ref().and_then(Live::realtime) {
                // At the start of a term: the tables must exist (each run checks the columns it writes).
                match rt.store().schema().await {
                    Ok(_) => tracing::info!("the realtime tables are there"),
                    Err(e) => tracing::error!(error = %e, "the realtime target cannot write yet"),
                }
            }
            hand_over(&settings, &rec).await;
            hand_over_followers(&settings, &fleet).await;
            reconcile::run_loop_with(rec, fleet, source, cfg, handle, rx, stop).await;
        }));
    }
    {
        let (db, triggers, stop) = (leading.db.clone(), tx.clone(), stopped(stop_rx.clone()));
        tasks.push(tokio::spawn(async move {
            let on = |asked: &str| {
                let t = if asked == "webhook" { reconcile::Trigger::Webhook } else { reconcile::Trigger::Manual };
                let _ = triggers.try_send(t);
            };
            db.listen_for_triggers(on, stop).await;
        }));
    }
    tasks.extend(call_loggers(settings, &leading.db, leading.calls.as_ref(), &leading.nodes, &stop_rx));
    // Realtime: each node's verification in a task of its own, off the loop.
    tasks.extend(fleet.verify_in_background(stop_rx.clone(), leading.loop_cfg.backoff));
    // The ari target on a large estate: its pushed objects are read back in
    // the background, not by every run (`asterisk::ari_config::sweep`).
    if reconciler.live.as_ref().and_then(Live::ari).is_some() {
        let (rec, triggers, stop) = (reconciler.clone(), tx.clone(), stopped(stop_rx.clone()));
        tasks.push(tokio::spawn(async move {
            if let Some(live) = rec.live.as_ref().and_then(Live::ari) {
                let wake = || {
                    let _ = triggers.try_send(reconcile::Trigger::Drift);
                };
                crate::asterisk::ari_config::sweep::sweep(live, rec.asterisk.as_ref(), Default::default(), wake, stop)
                    .await;
            }
        }));
    }
    // And one for every other node's ari target (`nodes:`): each has its own
    // objects, read back through its own ARI.
    for (i, follower) in fleet.followers.iter().enumerate() {
        if follower.reconciler.live.as_ref().and_then(Live::ari).is_none() {
            continue;
        }
        let (fleet, triggers, stop) = (fleet.clone(), tx.clone(), stopped(stop_rx.clone()));
        tasks.push(tokio::spawn(async move {
            let Some(follower) = fleet.followers.get(i) else { return };
            if let Some(live) = follower.reconciler.live.as_ref().and_then(Live::ari) {
                let wake = || {
                    let _ = triggers.try_send(reconcile::Trigger::Drift);
                };
                let asterisk = follower.reconciler.asterisk.as_ref();
                crate::asterisk::ari_config::sweep::sweep(live, asterisk, Default::default(), wake, stop).await;
            }
        }));
    }
    Some(Term { epoch, triggers: tx, stop: stop_tx, tasks, reconciler, fleet })
}

/// The call loggers the leader runs: one CEL logger per node (its AMI;
/// or the Stasis app on the first node's ARI with `callLog: stasis`), and
/// with CEL, on each node with ARI, the Stasis app that only hands calls
/// back to the dialplan. Calls are keyed by (node, linkedid); the rows from
/// before that are claimed for the first node before its logger starts.
/// Each node's logger counts in its `NodeLive::calls` (`/status` nodes[]).
fn call_loggers(
    settings: &Settings,
    db: &Db,
    stats: Option<&Arc<crate::calls::CallLogStats>>,
    nodes: &[crate::http::NodeLive],
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    let Some(stats) = stats else { return out };
    let client = |ari| match ari_client(ari) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "no ARI client: the Stasis app does not run");
            None
        }
    };
    let first = settings.nodes.first().map_or("default", |n| n.name.as_str()).to_string();
    match (settings.call_log, &settings.ari, &settings.ami) {
        (crate::config::CallSource::Stasis, Some(ari), _) => {
            if let Some(c) = client(ari) {
                let (db, cfg, stats, stop) = (db.clone(), ari.calls.clone(), stats.clone(), stop.clone());
                out.push(tokio::spawn(async move {
                    claim_calls(&db, &first).await;
                    crate::calls::run(db, &first, c, cfg, stats, stop).await
                }));
            }
        }
        (crate::config::CallSource::Cel, _, Some(_)) => {
            for (i, node) in settings.nodes.iter().enumerate() {
                let ami = ami_config(&node.ami);
                let stats = nodes.get(i).and_then(|n| n.calls.clone()).unwrap_or_else(|| stats.clone());
                let (db_, name, cfg, stop_) = (db.clone(), node.name.clone(), settings.calls.clone(), stop.clone());
                out.push(tokio::spawn(async move {
                    if i == 0 {
                        claim_calls(&db_, &name).await;
                    }
                    crate::calls::cel::run(db_, &name, ami, cfg, stats, stop_).await
                }));
                // With CEL logging every call, the Stasis app (where ARI is
                // configured) only hands calls that enter Stasis() back to the
                // dialplan, so they are not logged twice and never stay stuck.
                if let Some(ari) = &node.ari
                    && let Some(c) = client(ari)
                {
                    let cfg = crate::calls::CallLogConfig { record: false, ..ari.calls.clone() };
                    let (db, name, stop) = (db.clone(), node.name.clone(), stop.clone());
                    out.push(tokio::spawn(
                        async move { crate::calls::run(db, &name, c, cfg, Arc::default(), stop).await },
                    ));
                }
            }
        }
        _ => {}
    }
    out
}

/// Names the calls logged before calls were keyed per node after `first`
/// (`Db::claim_calls`): a failure is logged and leaves them unnamed.
async fn claim_calls(db: &Db, first: &str) {
    match db.claim_calls(first).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(node = first, calls = n, "calls logged before calls were kept per node are the first node's")
        }
        Err(e) => tracing::warn!(error = %e, "cannot name the calls logged before calls were kept per node"),
    }
}

/// Hands a running installation over between the apply targets before the
/// first run (`asterisk::ari_config::handover`): with `ari`, the extensions
/// the managed file still defines move into the astdb wizard; with `file`,
/// what the record says was pushed moves back into the managed file. What it
/// did is recorded as a run of its own (trigger `startup`, no plan). The
/// other nodes (`nodes:`) are handed over by [`hand_over_followers`].
pub async fn hand_over<S: reconcile::StateStore>(settings: &Settings, reconciler: &Reconciler<S, Asterisk, Live>) {
    let (Some(ami), Some(ari)) = (&reconciler.asterisk, &settings.ari) else { return };
    let started_at = chrono::Utc::now();
    let node = NodeFiles {
        name: settings.nodes.first().map_or("default", |n| n.name.as_str()),
        managed_file: &settings.managed_file,
        state_dir: &settings.state_dir,
        group: settings.managed_file_group,
    };
    let Some(done) = hand_over_node(settings.apply_target, ami, ari, node, reconciler).await else { return };
    let (outcome, error, reasons, reloaded) = match done {
        Ok(h) => {
            let error = h.failures_told();
            let outcome = if error.is_none() { reconcile::Outcome::Applied } else { reconcile::Outcome::Failed };
            (outcome, error, h.reasons, h.reloaded)
        }
        Err(e) => (reconcile::Outcome::Failed, Some(e.to_string()), vec![format!("hand-over not done: {e}")], false),
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
    if let Err(e) = reconciler.store.commit(&run, &[], &[], &Default::default()).await {
        tracing::error!(error = %e, "could not record the hand-over");
    }
}

/// One node (its name, where its files live), for its hand-over.
#[derive(Clone, Copy)]
struct NodeFiles<'a> {
    name: &'a str,
    managed_file: &'a std::path::Path,
    state_dir: &'a std::path::Path,
    group: Option<u32>,
}

/// One node's hand-over (see [`hand_over`]) through its AMI and ARI, with
/// its managed file and its record under its state directory; `None` when
/// there was nothing to hand over (or no ARI client to check with). What
/// it did, or why it could not start, is logged.
async fn hand_over_node<S: reconcile::StateStore>(
    target: crate::config::ApplyTarget,
    ami: &Asterisk,
    ari: &crate::config::AriSettings,
    node: NodeFiles<'_>,
    reconciler: &Reconciler<S, Asterisk, Live>,
) -> Option<Result<crate::asterisk::ari_config::handover::Handover, crate::asterisk::ari_config::handover::HandoverError>>
{
    use crate::asterisk::ari_config::{RECORD_FILE, handover};
    let done = match (target, &reconciler.live) {
        (crate::config::ApplyTarget::Ari, Some(Live::Ari(live))) => {
            let managed = ManagedFile::new(node.managed_file).with_group(node.group);
            handover::to_ari(ami, &live.client, &managed, reconciler.managed.as_ref()).await
        }
        (crate::config::ApplyTarget::File, _) => {
            let client = match ari_client(ari) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "no ARI client: no hand-over from the ari target checked");
                    return None;
                }
            };
            let record = ManagedFile::new(node.state_dir.join(RECORD_FILE));
            handover::to_file(ami, &client, reconciler.managed.as_ref(), &record).await
        }
        _ => return None,
    };
    match &done {
        Ok(Some(h)) => tracing::info!(
            node = node.name,
            direction = h.direction,
            handed = h.handed.len(),
            failed = h.failures.len(),
            reloaded = h.reloaded,
            reasons = %h.reasons.join("; "),
            "hand-over between the apply targets"
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::error!(node = node.name, error = %e, "the hand-over between the apply targets could not start")
        }
    }
    done.transpose()
}

/// The other nodes' hand-overs (`nodes:` after the first), each as the
/// first node's ([`hand_over`]) with its own AMI, ARI, managed file and
/// record, one after the other before the first run. Each is logged and
/// told as the node's last apply (`/status` `nodes[]`); a follower's runs
/// are not recorded, and its first run then applies everything anyway.
pub async fn hand_over_followers(settings: &Settings, fleet: &reconcile::fleet::Fleet<Asterisk, Live>) {
    for (node, follower) in settings.nodes.get(1..).unwrap_or_default().iter().zip(&fleet.followers) {
        let (Some(ami), Some(ari)) = (&follower.reconciler.asterisk, &node.ari) else { continue };
        let files = NodeFiles {
            name: &node.name,
            managed_file: &node.managed_file,
            state_dir: &node.state_dir,
            group: settings.managed_file_group,
        };
        let Some(done) = hand_over_node(settings.apply_target, ami, ari, files, &follower.reconciler).await else {
            continue;
        };
        let (outcome, error, reloaded) = match done {
            Ok(h) => {
                let error = h.failures_told();
                let outcome = if error.is_none() { "applied" } else { "failed" };
                (outcome, error.map(|e| format!("hand-over {}: {e}", h.direction)), h.reloaded)
            }
            Err(e) => ("failed", Some(format!("hand-over not done: {e}")), false),
        };
        let apply = reconcile::fleet::NodeApply {
            outcome: outcome.into(),
            error,
            revision: None,
            reloaded,
            at: chrono::Utc::now(),
        };
        if let Ok(mut w) = fleet.applies.write() {
            w.insert(node.name.clone(), apply);
        }
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
