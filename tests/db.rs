//! The state store on both backends: every test body runs on SQLite always
//! and on PostgreSQL when DATABASE_URL points at one (CI sets it; there a
//! missing PostgreSQL fails the run instead of skipping).

use crate::support::db::{drop_pg, on_both, pg_url, postgres, replace_db, sqlite, uuid_ish};
use asterisk_gitops::core::plan::{self, Action, Change, Plan};
use asterisk_gitops::core::spec::{DesiredSet, load::load_file};
use asterisk_gitops::db::calls::{CallFilter, CallStart};
use asterisk_gitops::db::{Db, DbError, Retry};
use asterisk_gitops::reconcile::{AppliedRow, Outcome, RunRecord, Trigger};
use chrono::{Duration as ChronoDuration, Utc};
use std::path::Path;
use std::time::Duration;

const SPECS: &str = "defaults: {context: from-internal, transport: transport-udp, codecs: [ulaw, alaw]}\nextensions:\n  - {extension: \"1001\", displayName: Test User, password: Plaintext-Secret-42, labels: {department: sales}}\n  - {extension: \"1002\", md5Cred: 281036cc5c24788fe74c0ae5d9c07baf, mailboxes: 1002@default}\n";

fn desired() -> DesiredSet {
    let (exts, _) =
        load_file("sales.yaml", &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(Path::new(".")), SPECS);
    DesiredSet::new(exts.into_iter().map(|(e, _)| e).collect())
}

fn rows(set: &DesiredSet) -> Vec<AppliedRow<'static>> {
    set.extensions
        .iter()
        .map(|e| {
            let md5 = match &e.secret {
                asterisk_gitops::core::spec::Secret::Password(p) => {
                    asterisk_gitops::secret::md5_cred(&e.extension, "asterisk", p)
                }
                asterisk_gitops::core::spec::Secret::Md5Cred(h) => h.clone(),
                _ => String::new(),
            };
            AppliedRow { secret_md5: md5, extension: std::borrow::Cow::Owned((**e).clone()) }
        })
        .collect()
}

fn run(outcome: Outcome, creates: &[&str]) -> RunRecord {
    let plan = Plan {
        changes: creates
            .iter()
            .map(|n| Change { extension: n.to_string(), action: Action::Create, fields: vec![], profile: None })
            .collect(),
        diff: "+[1001]\n".into(),
        ..Default::default()
    };
    RunRecord {
        trigger: Trigger::Cli,
        revision: Some("0123abcd".into()),
        subject: Some("Add sales".into()),
        started_at: Utc::now(),
        finished_at: Utc::now(),
        outcome,
        plan: Some(plan),
        error: None,
        diagnostics: vec![],
        reloaded: true,
        warning: None,
        reasons: vec![],
        rollback_failed: false,
    }
}

#[tokio::test]
async fn migrations_apply_once_and_a_second_start_is_a_no_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/nested/dir/x.db", dir.path().display());
    let db = Db::connect(&url, &Retry::default()).await.expect("first start creates and migrates");
    db.commit_run(&run(Outcome::NoOp, &[]), &[], &[], &Default::default()).await.expect("usable");
    db.close().await;
    let db = Db::connect(&url, &Retry::default()).await.expect("second start");
    assert_eq!(db.runs(10).await.expect("runs").len(), 1, "data survives, nothing re-created");
    let Db::Sqlite(pool) = &db else { panic!("sqlite") };
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations").fetch_one(pool).await.expect("count");
    let files = std::fs::read_dir("migrations/sqlite").expect("migrations").count();
    assert_eq!(n as usize, files, "each migration applied once");
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_version_is_refused() {
    on_both(|db| async move {
        let insert = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (29991231000000, 'from the future', TRUE, $1, 1)";
        match &db {
            Db::Sqlite(p) => sqlx::query(insert).bind(vec![0u8; 48]).execute(p).await.map(|_| ()),
            Db::Postgres(p) => sqlx::query(insert).bind(vec![0u8; 48]).execute(p).await.map(|_| ()),
        }
        .expect("fake a newer migration");
        let url = match &db {
            Db::Sqlite(p) => format!("sqlite://{}", p.connect_options().get_filename().display()),
            Db::Postgres(p) => {
                let o = p.connect_options();
                format!("postgres://{}@{}:{}/{}", o.get_username(), o.get_host(), o.get_port(), o.get_database().unwrap_or(""))
            }
        };
        let err = Db::connect(&url, &Retry::default()).await.expect_err("refused");
        assert!(matches!(err, DbError::TooNew { found: 29991231000000, .. }), "{err}");
        assert!(err.to_string().contains("newer asterisk-gitops"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn an_applied_plan_and_its_run_land_together() {
    on_both(|db| async move {
        let set = desired();
        let id = db
            .commit_run(&run(Outcome::Applied, &["1001", "1002"]), &rows(&set), &[], &Default::default())
            .await
            .expect("commits");
        let applied = db.applied_fields().await.expect("applied");
        assert_eq!(applied.keys().collect::<Vec<_>>(), ["1001", "1002"]);
        assert_eq!(
            applied["1001"],
            plan::desired_fields(&set.extensions[0], &rows(&set)[0].secret_md5),
            "fields round-trip"
        );
        let ext = db.extension("1001").await.expect("query").expect("row");
        assert_eq!(
            (ext.context.as_str(), ext.codecs.clone(), ext.secret_kind.as_str()),
            ("from-internal", vec!["ulaw".to_string(), "alaw".to_string()], "password")
        );
        assert_eq!(ext.labels.get("department").map(String::as_str), Some("sales"));
        assert_eq!(ext.revision.as_deref(), Some("0123abcd"));
        let detail = db.run(id).await.expect("query").expect("run");
        assert_eq!((detail.summary.outcome.as_str(), detail.summary.creates), ("applied", 2));
        assert_eq!(detail.diff.as_deref(), Some("+[1001]\n"));
        let status = db.status().await.expect("query").expect("row");
        assert_eq!((status.ready.as_str(), status.last_applied_revision.as_deref()), ("True", Some("0123abcd")));

        // Update one, delete the other.
        let mut changed = rows(&set);
        changed[0].extension.to_mut().display_name = Some("Renamed".into());
        db.commit_run(&run(Outcome::Applied, &[]), &changed[..1], &["1002".to_string()], &Default::default())
            .await
            .expect("commits");
        let all = db.extensions().await.expect("list");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].display_name.as_deref(), Some("Renamed"));

        // A failed run keeps the last applied revision and says why.
        let mut failed = run(Outcome::Failed, &[]);
        failed.revision = Some("feedbeef".into());
        failed.error = Some("reload failed".into());
        db.commit_run(&failed, &[], &[], &Default::default()).await.expect("commits");
        let status = db.status().await.expect("query").expect("row");
        assert_eq!(
            (
                status.ready.as_str(),
                status.ready_reason.as_str(),
                status.last_applied_revision.as_deref(),
                status.last_attempted_revision.as_deref()
            ),
            ("False", "ReconciliationFailed", Some("0123abcd"), Some("feedbeef"))
        );
        assert_eq!(
            db.runs(10).await.expect("runs").iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
            ["failed", "applied", "applied"]
        );
    })
    .await;
}

#[tokio::test]
async fn a_failure_mid_apply_leaves_nothing_half_written() {
    on_both(|db| async move {
        // Make the run insert fail after the extension rows were written in the same transaction.
        match &db {
            Db::Sqlite(p) => sqlx::query("CREATE TRIGGER boom BEFORE INSERT ON reconcile_runs BEGIN SELECT RAISE(ABORT, 'boom'); END;").execute(p).await.map(|_| ()),
            Db::Postgres(p) => async {
                sqlx::query("CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$ LANGUAGE plpgsql").execute(p).await?;
                sqlx::query("CREATE TRIGGER boom BEFORE INSERT ON reconcile_runs FOR EACH ROW EXECUTE FUNCTION boom()").execute(p).await.map(|_| ())
            }
            .await,
        }
        .expect("trigger");
        let set = desired();
        let err = db.commit_run(&run(Outcome::Applied, &["1001", "1002"]), &rows(&set), &[], &Default::default()).await.expect_err("fails");
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(db.applied_fields().await.expect("query").is_empty(), "no extension row without its run");
        assert!(db.status().await.expect("query").is_none());
    })
    .await;
}

#[tokio::test]
async fn a_database_that_is_down_at_start_is_retried_then_reported() {
    let retry = Retry { attempts: 3, first_delay: Duration::from_millis(20), max_delay: Duration::from_millis(50) };
    let started = std::time::Instant::now();
    let err = Db::connect("postgres://app:s3cret@127.0.0.1:1/callcenter", &retry)
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(matches!(err, DbError::Connect { attempts: 3, .. }), "{text}");
    assert!(text.contains("postgres://app:***@127.0.0.1:1/callcenter") && !text.contains("s3cret"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(40), "it waited between attempts");
    let err = Db::connect("mysql://x", &retry).await.expect_err("unsupported");
    assert!(matches!(err, DbError::Unsupported(_)));
}

#[tokio::test]
async fn a_database_that_goes_away_mid_run_is_an_error_not_a_panic() {
    on_both(|db| async move {
        db.close().await;
        let set = desired();
        let err = db
            .commit_run(&run(Outcome::Applied, &["1001"]), &rows(&set), &[], &Default::default())
            .await
            .expect_err("closed");
        assert!(err.to_string().starts_with("database: "), "{err}");
        assert!(!db.ping().await);
    })
    .await;
    // PostgreSQL killing our connections: the pool notices and the next query works again.
    if let Some((db, server, name)) = postgres().await {
        let Db::Postgres(pool) = &db else { panic!("postgres") };
        let admin = sqlx::PgPool::connect(&server).await.expect("admin");
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .execute(&admin)
        .await
        .expect("terminate");
        admin.close().await;
        let first = db.applied_fields().await;
        let second = db.applied_fields().await;
        assert!(first.is_ok() || second.is_ok(), "the pool recovers: {first:?} {second:?}");
        let _ = pool;
        drop_pg(db, &server, &name).await;
    }
}

/// Every column of every table, as text.
async fn dump(db: &Db) -> String {
    let tables = ["extensions", "reconcile_runs", "reconciler_status", "calls", "_sqlx_migrations"];
    let mut out = String::new();
    for t in tables {
        let rows: Vec<String> = match db {
            Db::Postgres(p) => {
                sqlx::query_scalar(&format!("SELECT t::text FROM {t} t")).fetch_all(p).await.expect("dump")
            }
            Db::Sqlite(p) => {
                let cols: Vec<String> = sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{t}')"))
                    .fetch_all(p)
                    .await
                    .expect("cols");
                let expr =
                    cols.iter().map(|c| format!("COALESCE(quote({c}), '')")).collect::<Vec<_>>().join(" || '|' || ");
                sqlx::query_scalar(&format!("SELECT {expr} FROM {t}")).fetch_all(p).await.expect("dump")
            }
        };
        out.push_str(&rows.join("\n"));
    }
    out
}

#[tokio::test]
async fn a_plaintext_password_is_nowhere_in_the_database() {
    on_both(|db| async move {
        let set = desired();
        let mut r = run(Outcome::Applied, &["1001", "1002"]);
        let (_, diags) =
            load_file("sales.yaml", &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(Path::new(".")), SPECS);
        r.diagnostics = diags;
        db.commit_run(&r, &rows(&set), &[], &Default::default()).await.expect("commits");
        let all = dump(&db).await;
        assert!(all.contains("1001") && all.contains("Test User"), "the dump sees the data");
        assert!(!all.contains("Plaintext-Secret-42"), "plaintext password stored somewhere");
    })
    .await;
}

#[tokio::test]
async fn calls_are_recorded_exactly_once() {
    on_both(|db| async move {
        let start = Utc::now() - ChronoDuration::seconds(60);
        let c = CallStart {
            node: "default".into(),
            channel_id: "1700000000.42".into(),
            extension: Some("1001".into()),
            caller: Some("1001".into()),
            callee: Some("998901234567".into()),
            direction: "outbound".into(),
            start_time: start,
        };
        assert!(db.call_started(&c).await.expect("insert"));
        assert!(!db.call_started(&c).await.expect("duplicate"), "a replayed StasisStart adds nothing");
        let answered = start + ChronoDuration::seconds(5);
        assert!(db.call_answered("default", &c.channel_id, answered).await.expect("answer"));
        assert!(
            !db.call_answered("default", &c.channel_id, answered + ChronoDuration::seconds(1)).await.expect("again")
        );
        let end = answered + ChronoDuration::seconds(42);
        assert!(db.call_ended("default", &c.channel_id, end, Some(16)).await.expect("end"));
        assert!(
            !db.call_ended("default", &c.channel_id, end + ChronoDuration::seconds(9), Some(17)).await.expect("again")
        );
        let calls = db.calls(&CallFilter { limit: 10, ..Default::default() }).await.expect("list");
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert_eq!(
            (call.duration_seconds, call.hangup_cause, call.disposition.as_deref()),
            (Some(42), Some(16), Some("answered"))
        );

        // A call that never ends is closed as unknown after the timeout.
        let stale =
            CallStart { channel_id: "stale.1".into(), start_time: Utc::now() - ChronoDuration::hours(5), ..c.clone() };
        db.call_started(&stale).await.expect("insert");
        assert_eq!(db.close_stale_calls("default", Utc::now() - ChronoDuration::hours(4)).await.expect("close"), 1);
        let filtered = db
            .calls(&CallFilter { extension: Some("1001".into()), limit: 1, ..Default::default() })
            .await
            .expect("list");
        assert_eq!(filtered.len(), 1);
        assert_eq!(filtered[0].disposition.as_deref(), Some("unknown"));
        let next = db
            .calls(&CallFilter { limit: 10, cursor: Some(filtered[0].id), ..Default::default() })
            .await
            .expect("page 2");
        assert_eq!(next.iter().map(|c| c.channel_id.as_str()).collect::<Vec<_>>(), ["1700000000.42"]);
        let none = db
            .calls(&CallFilter { direction: Some("inbound".into()), limit: 10, ..Default::default() })
            .await
            .expect("list");
        assert!(none.is_empty());
    })
    .await;
}

/// Two Asterisk servers without `systemname` hand out the same uniqueids
/// (`<epoch>.<counter>`, the counter from 0 in each process): one call on
/// each with the same linkedid and leg uniqueids is two calls, each its
/// node's, read, completed and swept apart.
#[tokio::test]
async fn the_same_linkedid_on_two_nodes_is_two_calls() {
    use asterisk_gitops::db::calls::LegStart;
    on_both(|db| async move {
        let start = Utc::now() - ChronoDuration::seconds(30);
        let linkedid = "1733100000.0";
        for node in ["a", "b"] {
            let mut b = db.cel_batch(node).await.expect("batch");
            let call = CallStart {
                node: node.into(),
                channel_id: linkedid.into(),
                extension: Some("1001".into()),
                caller: Some("1001".into()),
                callee: Some("1002".into()),
                direction: "internal".into(),
                start_time: start,
            };
            assert!(b.cel_call_started(&call).await.expect("call"), "{node}: a row of its own");
            assert!(!b.cel_call_started(&call).await.expect("again"), "{node}: once");
            for (uid, ext, role) in [(linkedid, "1001", "caller"), ("1733100000.1", "1002", "callee")] {
                let leg = LegStart {
                    linkedid: linkedid.into(),
                    uniqueid: uid.into(),
                    channel: format!("PJSIP/{ext}-00000000"),
                    extension: Some(ext.into()),
                    role: role.into(),
                    caller: Some("1001".into()),
                    dialled: Some("1002".into()),
                    start_time: start,
                };
                assert!(b.leg_started(&leg).await.expect("leg"), "{node}: leg {uid} of its own");
            }
            b.commit().await.expect("commit");
        }
        // Node a's call is answered and ends; node b's stays open.
        let mut b = db.cel_batch("a").await.expect("batch");
        b.leg_answered(linkedid, "1733100000.1", start + ChronoDuration::seconds(2)).await.expect("answer");
        b.leg_hung_up(linkedid, Some(16), Some("PJSIP/1001-00000000"), Some("ANSWER")).await.expect("hangup");
        assert!(b.cel_call_ended(linkedid, start + ChronoDuration::seconds(12)).await.expect("end"));
        b.commit().await.expect("commit");

        let all = db.calls(&CallFilter { limit: 10, ..Default::default() }).await.expect("list");
        let mut seen: Vec<(Option<&str>, &str, Option<&str>)> =
            all.iter().map(|c| (c.node.as_deref(), c.channel_id.as_str(), c.disposition.as_deref())).collect();
        seen.sort();
        assert_eq!(seen, [(Some("a"), linkedid, Some("answered")), (Some("b"), linkedid, None)]);
        let on_b = db.calls(&CallFilter { node: Some("b".into()), limit: 10, ..Default::default() }).await.expect("b");
        assert_eq!(on_b.iter().map(|c| c.node.as_deref()).collect::<Vec<_>>(), [Some("b")]);
        let by_leg = db
            .calls(&CallFilter {
                node: Some("a".into()),
                extension: Some("1002".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("a, 1002");
        assert_eq!(by_leg.len(), 1, "{by_leg:?}");
        let (call, legs) = db.call_with_legs(Some("a"), linkedid).await.expect("read").expect("a's call");
        assert_eq!((call.answered_by.as_deref(), legs.len()), (Some("1002"), 2));
        assert!(legs.iter().all(|l| l.end_time.is_some()), "a's legs ended: {legs:?}");
        let b_legs = db.legs(Some("b"), linkedid).await.expect("b's legs");
        assert!(b_legs.iter().all(|l| l.answer_time.is_none() && l.end_time.is_none()), "{b_legs:?}");
        assert!(db.open_cel_calls("a").await.expect("open a").is_empty());
        assert_eq!(db.open_cel_calls("b").await.expect("open b"), [linkedid]);
        // The sweeper of node a closes none of node b's calls.
        assert_eq!(db.close_stale_calls("a", Utc::now()).await.expect("sweep a"), 0);
        assert_eq!(db.close_stale_calls("b", Utc::now()).await.expect("sweep b"), 1);

        // A row from before calls were logged per node (node NULL) is the
        // first node's once the daemon claims it, and only once.
        let insert = "INSERT INTO calls (channel_id, direction, start_time, updated_at, source) \
                      VALUES ('1700000000.7', 'internal', $1, $1, 'cel')";
        match &db {
            Db::Sqlite(p) => sqlx::query(insert).bind(start).execute(p).await.map(drop),
            Db::Postgres(p) => sqlx::query(insert).bind(start).execute(p).await.map(drop),
        }
        .expect("an old row");
        let old = db.call_with_legs(None, "1700000000.7").await.expect("read").expect("the old row");
        assert_eq!(old.0.node, None);
        assert_eq!(db.claim_calls("a").await.expect("claim"), 1);
        assert_eq!(db.claim_calls("a").await.expect("claim again"), 0);
        let old = db.call_with_legs(Some("a"), "1700000000.7").await.expect("read").expect("now a's");
        assert_eq!(old.0.node.as_deref(), Some("a"));
    })
    .await;
}

#[tokio::test]
async fn run_stats_count_by_outcome_with_cumulative_buckets() {
    on_both(|db| async move {
        let mut slow = run(Outcome::Applied, &[]);
        slow.finished_at = slow.started_at + ChronoDuration::milliseconds(700);
        db.commit_run(&slow, &[], &[], &Default::default()).await.expect("commits");
        db.commit_run(&run(Outcome::Applied, &[]), &[], &[], &Default::default()).await.expect("commits");
        db.commit_run(&run(Outcome::Failed, &[]), &[], &[], &Default::default()).await.expect("commits");
        let stats = db.run_stats(&[100, 1000]).await.expect("stats");
        let applied = stats.iter().find(|s| s.outcome == "applied").expect("applied runs");
        assert_eq!((applied.count, applied.buckets.clone()), (2, vec![1, 2]));
        assert!(applied.total_ms >= 700);
        assert_eq!(stats.iter().find(|s| s.outcome == "failed").map(|s| s.count), Some(1));
    })
    .await;
}

/// Rows applied before the profile migration (20261201000020) come out of
/// it as nat with the qualify frequency their field map was stored with;
/// the plan reads them as nat too, so the upgrade changes no extension.
#[tokio::test]
async fn rows_applied_before_profiles_migrate_as_nat_with_their_qualify_frequency() {
    let old_row = "INSERT INTO extensions (number, context, transport, codecs, secret_kind, secret_md5, max_contacts, \
         enabled, labels, fields, spec_hash, source_file, applied_at, sync_status) VALUES \
         ('1001', 'c', 't', 'ulaw', 'md5Cred', 'x', 1, TRUE, '{}', '{\"qualifyFrequency\":\"30\",\"context\":\"c\"}', 'h', 'f', '2026-11-30T00:00:00Z', 'synced'), \
         ('1002', 'c', 't', 'ulaw', 'md5Cred', 'x', 1, TRUE, '{}', '{\"context\":\"c\"}', 'h', 'f', '2026-11-30T00:00:00Z', 'synced')";
    let read = "SELECT number, profile, qualify_frequency FROM extensions ORDER BY number";
    let want = vec![("1001".to_string(), "nat".to_string(), 30i64), ("1002".to_string(), "nat".to_string(), 60)];

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("sqlite");
    sqlx::raw_sql(include_str!("../migrations/sqlite/20261124000001_initial.sql"))
        .execute(&pool)
        .await
        .expect("initial");
    sqlx::raw_sql(old_row).execute(&pool).await.expect("old rows");
    sqlx::raw_sql(include_str!("../migrations/sqlite/20261201000010_extension_status.sql"))
        .execute(&pool)
        .await
        .expect("the migration before");
    sqlx::raw_sql(include_str!("../migrations/sqlite/20261201000020_profile_qualify.sql"))
        .execute(&pool)
        .await
        .expect("the profile migration");
    let got: Vec<(String, String, i64)> = sqlx::query_as(read).fetch_all(&pool).await.expect("read");
    assert_eq!(got, want, "sqlite");
    pool.close().await;
    // The plan reads a field map stored without a profile as nat, as the spec resolves it.
    let (db, _d) = sqlite().await;
    let Db::Sqlite(p) = &db else { panic!("sqlite") };
    sqlx::raw_sql(old_row).execute(p).await.expect("old rows");
    let applied = db.applied_fields().await.expect("applied");
    assert_eq!(applied["1001"].get("profile"), Some("nat"));
    assert_eq!(applied["1001"].get("qualifyFrequency"), Some("30"));

    if let Some(server) = pg_url() {
        let admin = sqlx::PgPool::connect(&server).await.expect("postgres");
        let name = format!("agt_mig_{}_{}", std::process::id(), uuid_ish());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
        let pool = sqlx::PgPool::connect(&replace_db(&server, &name)).await.expect("connect");
        sqlx::raw_sql(include_str!("../migrations/postgres/20261124000001_initial.sql"))
            .execute(&pool)
            .await
            .expect("initial");
        sqlx::raw_sql(old_row).execute(&pool).await.expect("old rows");
        sqlx::raw_sql(include_str!("../migrations/postgres/20261201000010_extension_status.sql"))
            .execute(&pool)
            .await
            .expect("the migration before");
        sqlx::raw_sql(include_str!("../migrations/postgres/20261201000020_profile_qualify.sql"))
            .execute(&pool)
            .await
            .expect("the profile migration");
        let got: Vec<(String, String, i64)> = sqlx::query_as(read).fetch_all(&pool).await.expect("read");
        assert_eq!(got, want, "postgres");
        pool.close().await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
        admin.close().await;
    }
}

/// The HTTP side's counting and paging queries (`db::read`) say what the
/// full list says, declared-only extensions included, on both backends.
#[tokio::test]
async fn counts_and_pages_agree_with_the_full_list() {
    use asterisk_gitops::core::status::{ExtensionState, Reset, StatusUpdate, SyncState};
    on_both(|db| async move {
        let set = desired();
        db.commit_run(&run(Outcome::Applied, &["1001", "1002"]), &rows(&set), &[], &Default::default())
            .await
            .expect("commits");
        let (more, _) = load_file(
            "more.yaml",
            &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(Path::new(".")),
            "extensions:\n  - {extension: \"1003\", displayName: Late Comer, context: c, transport: t, codecs: [ulaw], md5Cred: 281036cc5c24788fe74c0ae5d9c07baf}\n",
        );
        let late = more[0].0.clone();
        let states = StatusUpdate {
            reset: Reset::Nothing,
            states: vec![
                ExtensionState { number: "1003".into(), state: SyncState::Pending, reason: None, declared: Some(&late) },
                ExtensionState { number: "1002".into(), state: SyncState::Failed, reason: Some("refused".into()), declared: None },
            ],
            only_new: false,
        };
        db.set_states(&states).await.expect("states");
        let all = db.extensions().await.expect("list");
        assert_eq!(all.iter().map(|r| r.number.as_str()).collect::<Vec<_>>(), ["1001", "1002", "1003"]);

        let counts = db.sync_counts().await.expect("counts");
        assert_eq!(counts.get("synced"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("failed"), Some(&1), "{counts:?}");
        assert_eq!(counts.get("pending"), Some(&1), "{counts:?}");
        assert_eq!(db.count_extensions_among(&["1001", "1003", "9999"]).await.expect("count"), 2);

        let page = db.extensions_page(None, 1, 2).await.expect("page");
        assert_eq!(page.total, 3);
        assert_eq!(page.records, all[1..].to_vec(), "the same records as the full list");
        let failed = db.extensions_page(Some("failed"), 0, 10).await.expect("page");
        assert_eq!((failed.total, failed.records.len()), (1, 1));
        assert_eq!(failed.records[0].last_error.as_deref(), Some("refused"));
        let all_of_them = db.extensions_page(None, 0, usize::MAX).await.expect("page");
        assert_eq!(all_of_them.records, all);

        // Search candidates: a superset of what matches, never missing one.
        let sales = db.extensions_matching("SALES").await.expect("search").expect("pre-filtered");
        assert_eq!(sales.iter().map(|r| r.number.as_str()).collect::<Vec<_>>(), ["1001"], "a label value");
        let late = db.extensions_matching("comer").await.expect("search").expect("pre-filtered");
        assert_eq!(late.iter().map(|r| r.number.as_str()).collect::<Vec<_>>(), ["1003"], "a declared copy");
        assert!(db.extensions_matching("ü").await.expect("search").is_none(), "not pre-filtered: the caller loads all");
    })
    .await;
}

/// Every column of the field table (`spec::fields::COLUMNS`) is written
/// with the run and read back as the extension declared it: a field added
/// to the table but not bound, or not read, fails here.
#[tokio::test]
async fn every_stored_field_of_the_field_table_round_trips() {
    on_both(|db| async move {
        let yaml = "extensions:\n  - {extension: \"1001\", displayName: Desk, context: c, transport: t, codecs: [ulaw, alaw], \
                    md5Cred: 0123456789abcdef0123456789abcdef, maxContacts: 3, qualifyFrequency: 30, callerId: '\"Front\" <1001>', \
                    mailboxes: 1001@default, dtmfMode: info, profile: lan, directMedia: true, rtpSymmetric: true, \
                    forceRport: false, rewriteContact: true, enabled: false, labels: {team: a}, \
                    options: {endpoint: {timers: required}}}\n";
        let (exts, diags) =
            load_file("all.yaml", &asterisk_gitops::core::spec::SecretPolicy::for_spec_dir(Path::new(".")), yaml);
        assert!(diags.is_empty(), "{diags:?}");
        let set = DesiredSet::new(exts.into_iter().map(|(e, _)| e).collect());
        db.commit_run(&run(Outcome::Applied, &["1001"]), &rows(&set), &[], &Default::default()).await.expect("commits");
        let back = db.extension("1001").await.expect("query").expect("row");
        let back = serde_json::to_value(back).expect("json");
        let declared =
            serde_json::to_value(asterisk_gitops::db::ExtensionRecord::declared(&set.extensions[0])).expect("json");
        for column in asterisk_gitops::core::spec::fields::COLUMNS {
            let mut key = String::new();
            let mut upper = false;
            for c in column.chars() {
                match c {
                    '_' => upper = true,
                    c if upper => {
                        key.push(c.to_ascii_uppercase());
                        upper = false;
                    }
                    c => key.push(c),
                }
            }
            let stored = &back[&key];
            assert!(!stored.is_null() && stored != &serde_json::json!([]), "{column} ({key}) was not stored: {back}");
            assert_eq!(stored, &declared[&key], "{column} ({key})");
        }
    })
    .await;
}
