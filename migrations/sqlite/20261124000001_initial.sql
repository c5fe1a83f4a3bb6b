-- The applied state: what asterisk-gitops configured in Asterisk. Never a plaintext password.
CREATE TABLE extensions (
    number          TEXT PRIMARY KEY,
    display_name    TEXT,
    context         TEXT NOT NULL,
    transport       TEXT NOT NULL,
    codecs          TEXT NOT NULL,             -- comma-separated, in order of preference
    secret_kind     TEXT NOT NULL,             -- md5Cred | passwordEnv | passwordFile | password
    secret_md5      TEXT NOT NULL,             -- md5("number:realm:password")
    max_contacts    INTEGER NOT NULL,
    caller_id       TEXT,
    mailboxes       TEXT,
    dtmf_mode       TEXT,
    direct_media    BOOLEAN,
    rtp_symmetric   BOOLEAN,
    force_rport     BOOLEAN,
    rewrite_contact BOOLEAN,
    enabled         BOOLEAN NOT NULL,
    labels          TEXT NOT NULL,             -- JSON object
    fields          TEXT NOT NULL,             -- JSON: the plan's canonical field map
    spec_hash       TEXT NOT NULL,
    source_file     TEXT NOT NULL,
    revision        TEXT,
    applied_at      TEXT NOT NULL,
    sync_status     TEXT NOT NULL,             -- synced | failed
    last_error      TEXT
);

CREATE TABLE reconcile_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger      TEXT NOT NULL,
    revision     TEXT,
    subject      TEXT,
    started_at   TEXT NOT NULL,
    finished_at  TEXT NOT NULL,
    duration_ms  INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    creates      INTEGER NOT NULL,
    updates      INTEGER NOT NULL,
    deletes      INTEGER NOT NULL,
    reloaded     BOOLEAN NOT NULL,
    plan         TEXT,                         -- JSON
    diff         TEXT,
    diagnostics  TEXT NOT NULL,                -- JSON array
    error        TEXT,
    warning      TEXT
);
CREATE INDEX reconcile_runs_started ON reconcile_runs (started_at DESC);

-- Flux-style status of the reconciler: one row.
CREATE TABLE reconciler_status (
    id                      INTEGER PRIMARY KEY CHECK (id = 1),
    ready                   TEXT NOT NULL,     -- True | False | Unknown
    ready_reason            TEXT NOT NULL,
    ready_message           TEXT NOT NULL,
    reconciling             BOOLEAN NOT NULL,
    last_applied_revision   TEXT,
    last_attempted_revision TEXT,
    last_run_id             INTEGER,
    updated_at              TEXT NOT NULL
);

-- Calls made through the Stasis application (see the call logger).
CREATE TABLE calls (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id       TEXT NOT NULL UNIQUE,
    extension        TEXT,
    caller           TEXT,
    callee           TEXT,
    direction        TEXT NOT NULL,            -- outbound | internal | inbound
    start_time       TEXT NOT NULL,
    answer_time      TEXT,
    end_time         TEXT,
    duration_seconds INTEGER,
    hangup_cause     INTEGER,
    disposition      TEXT,                     -- answered | no-answer | busy | failed | unknown
    updated_at       TEXT NOT NULL
);
CREATE INDEX calls_start ON calls (start_time DESC);
CREATE INDEX calls_extension ON calls (extension, start_time DESC);
