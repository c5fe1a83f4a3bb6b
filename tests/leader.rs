//! Leader election and fencing on the state store (`db::leader`), without
//! Asterisk: two elections on one PostgreSQL database, the leader's lock
//! connection terminated, a deposed leader's commit refused in its own
//! transaction; SQLite's single daemon leading at once.

use crate::support::db::{drop_pg, postgres, sqlite};
use asterisk_gitops::db::leader::{APPLICATION_NAME, Fenced, Role, elect};
use asterisk_gitops::db::{Db, DbError};
use asterisk_gitops::reconcile::{Outcome, RunRecord, StateStore, Trigger};
use std::time::Duration;
use tokio::sync::watch;

fn run() -> RunRecord {
    RunRecord {
        trigger: Trigger::Manual,
        revision: Some("fence-test".into()),
        subject: None,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        outcome: Outcome::NoOp,
        plan: None,
        error: None,
        diagnostics: vec![],
        reloaded: false,
        warning: None,
        reasons: vec![],
        rollback_failed: false,
    }
}

/// Waits until `rx` holds a role `pred` accepts; returns it.
async fn role_where(rx: &mut watch::Receiver<Role>, what: &str, pred: impl Fn(&Role) -> bool) -> Role {
    let found = match tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|r| pred(r))).await {
        Ok(Ok(r)) => Some(*r),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("timed out waiting for {what}; role is {:?}", *rx.borrow()))
}

async fn runs_named(db: &Db) -> usize {
    db.runs(100).await.expect("runs").iter().filter(|r| r.revision.as_deref() == Some("fence-test")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_lock_connection_hands_the_lead_over_and_the_old_epoch_cannot_commit() {
    let Some((db, server, name)) = postgres().await else { return };
    let url = crate::support::db::replace_db(&server, &name);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (a_tx, mut a) = watch::channel(Role::Follower);
    let ea = tokio::spawn(elect(db.clone(), url.clone(), "test-a".into(), a_tx, stopped(stop_rx.clone())));
    let Role::Leader { epoch: first } = role_where(&mut a, "a leads", Role::is_leader).await else { unreachable!() };
    let (b_tx, mut b) = watch::channel(Role::Follower);
    let eb = tokio::spawn(elect(db.clone(), url.clone(), "test-b".into(), b_tx, stopped(stop_rx.clone())));
    // b asks for the lock and is refused while a holds it.
    let recorded = db.leader().await.expect("leader").expect("a row");
    assert_eq!((recorded.instance_id.as_str(), recorded.epoch), ("test-a", first));
    assert_eq!(*b.borrow(), Role::Follower);

    let Db::Postgres(pool) = &db else { unreachable!() };
    let ended: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
    )
    .bind(format!("{APPLICATION_NAME} test-a"))
    .fetch_all(pool)
    .await
    .expect("terminate");
    assert_eq!(ended, [(true,)], "a's one lock connection");
    let Role::Leader { epoch: second } = role_where(&mut b, "b takes over", Role::is_leader).await else {
        unreachable!()
    };
    assert!(second > first, "a new epoch: {first} then {second}");
    role_where(&mut a, "a steps down", |r| !r.is_leader()).await;
    assert_eq!(db.leader().await.expect("leader").expect("row").instance_id, "test-b");

    // a's store, as a leader that has not noticed yet: refused by the check
    // in the commit's own transaction, nothing written.
    let (_still, stale) = watch::channel(Role::Leader { epoch: first });
    let late = Fenced::new(db.clone(), first, stale).commit(&run(), &[], &[], &Default::default()).await;
    assert!(matches!(late, Err(DbError::Fenced { epoch }) if epoch == first), "{late:?}");
    assert_eq!(runs_named(&db).await, 0, "the refused commit wrote no run");
    // And once it has noticed, it does not even try.
    let noticed =
        Fenced::new(db.clone(), first, a.clone()).progress(asterisk_gitops::core::status::Step::Planning).await;
    assert!(matches!(noticed, Err(DbError::Fenced { .. })), "{noticed:?}");
    // The new leader's commit lands.
    Fenced::new(db.clone(), second, b.clone()).commit(&run(), &[], &[], &Default::default()).await.expect("commits");
    assert_eq!(runs_named(&db).await, 1);

    let _ = stop_tx.send(true);
    let _ = ea.await;
    let _ = eb.await;
    drop_pg(db, &server, &name).await;
}

#[tokio::test]
async fn with_sqlite_the_one_daemon_leads_at_once() {
    let (db, _dir) = sqlite().await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, mut rx) = watch::channel(Role::Follower);
    let e = tokio::spawn(elect(db.clone(), String::new(), "solo".into(), tx, async move {
        let mut s = stop_rx;
        let _ = s.wait_for(|s| *s).await;
    }));
    let Role::Leader { epoch } = role_where(&mut rx, "leads", Role::is_leader).await else { unreachable!() };
    Fenced::new(db.clone(), epoch, rx.clone()).commit(&run(), &[], &[], &Default::default()).await.expect("commits");
    assert_eq!(runs_named(&db).await, 1);
    let (_stale_tx, stale) = watch::channel(Role::Leader { epoch: epoch - 1 });
    let old = Fenced::new(db.clone(), epoch - 1, stale).commit(&run(), &[], &[], &Default::default()).await;
    assert!(matches!(old, Err(DbError::Fenced { .. })), "an older epoch is refused on SQLite too: {old:?}");
    let _ = stop_tx.send(true);
    let _ = e.await;
}

/// The lock connection has PostgreSQL notice a peer gone silent within
/// seconds (keepalives, user timeout), so a partition that leaves its
/// socket open cannot keep the lock for the system's two hours: the
/// connection the election opens carries those settings.
#[tokio::test]
async fn the_lock_connection_lets_postgresql_notice_a_silent_peer_within_seconds() {
    use sqlx::Connection;
    let Some((db, server, name)) = postgres().await else { return };
    let url = crate::support::db::replace_db(&server, &name);
    let opts = asterisk_gitops::db::leader::lock_connect_options(&url, "keepalive-test").expect("options");
    let mut conn = sqlx::PgConnection::connect_with(&opts).await.expect("connect");
    let mut got = Vec::new();
    for setting in ["tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout"] {
        let v: String =
            sqlx::query_scalar("SELECT current_setting($1)").bind(setting).fetch_one(&mut conn).await.expect("setting");
        got.push((setting, v));
    }
    // Over TCP PostgreSQL reports what the socket has (on a Unix socket,
    // where none of this applies, it says 0).
    let unix = url.contains("host=/") || url.contains("%2F");
    let app: String =
        sqlx::query_scalar("SELECT current_setting('application_name')").fetch_one(&mut conn).await.expect("name");
    drop(conn);
    drop_pg(db, &server, &name).await;
    assert_eq!(app, format!("{APPLICATION_NAME} keepalive-test"));
    if unix {
        eprintln!("SKIPPED the keepalive settings check: the database is reached over a Unix socket");
        return;
    }
    assert_eq!(
        got,
        vec![
            ("tcp_keepalives_idle", "2".to_string()),
            ("tcp_keepalives_interval", "1".to_string()),
            ("tcp_keepalives_count", "2".to_string()),
            ("tcp_user_timeout", "4000".to_string()),
        ],
        "the lock connection's socket settings"
    );
}
