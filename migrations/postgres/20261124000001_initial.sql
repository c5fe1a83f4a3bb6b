-- The applied state: what asterisk-gitops configured in Asterisk. Never a plaintext password.
CREATE TABLE extensions (
    number          TEXT PRIMARY KEY,
    display_name    TEXT,
    context         TEXT NOT NULL,
    transport       TEXT NOT NULL,
    codecs          TEXT NOT NULL,
    secret_kind     TEXT NOT NULL,
    secret_md5      TEXT NOT NULL,
    max_contacts    BIGINT NOT NULL,
    caller_id       TEXT,
    mailboxes       TEXT,
    dtmf_mode       TEXT,
    direct_media    BOOLEAN,
    rtp_symmetric   BOOLEAN,
    force_rport     BOOLEAN,
    rewrite_contact BOOLEAN,
    enabled         BOOLEAN NOT NULL,
    labels          JSONB NOT NULL,
    fields          JSONB NOT NULL,
    spec_hash       TEXT NOT NULL,
    source_file     TEXT NOT NULL,
    revision        TEXT,
    applied_at      TIMESTAMPTZ NOT NULL,
    sync_status     TEXT NOT NULL,
    last_error      TEXT
);

CREATE TABLE reconcile_runs (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger      TEXT NOT NULL,
    revision     TEXT,
    subject      TEXT,
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ NOT NULL,
    duration_ms  BIGINT NOT NULL,
    outcome      TEXT NOT NULL,
    creates      BIGINT NOT NULL,
    updates      BIGINT NOT NULL,
    deletes      BIGINT NOT NULL,
    reloaded     BOOLEAN NOT NULL,
    plan         JSONB,
    diff         TEXT,
    diagnostics  JSONB NOT NULL,
    error        TEXT,
    warning      TEXT
);
CREATE INDEX reconcile_runs_started ON reconcile_runs (started_at DESC);

CREATE TABLE reconciler_status (
    id                      INTEGER PRIMARY KEY CHECK (id = 1),
    ready                   TEXT NOT NULL,
    ready_reason            TEXT NOT NULL,
    ready_message           TEXT NOT NULL,
    reconciling             BOOLEAN NOT NULL,
    last_applied_revision   TEXT,
    last_attempted_revision TEXT,
    last_run_id             BIGINT,
    updated_at              TIMESTAMPTZ NOT NULL
);

CREATE TABLE calls (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id       TEXT NOT NULL UNIQUE,
    extension        TEXT,
    caller           TEXT,
    callee           TEXT,
    direction        TEXT NOT NULL,
    start_time       TIMESTAMPTZ NOT NULL,
    answer_time      TIMESTAMPTZ,
    end_time         TIMESTAMPTZ,
    duration_seconds BIGINT,
    hangup_cause     BIGINT,
    disposition      TEXT,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX calls_start ON calls (start_time DESC);
CREATE INDEX calls_extension ON calls (extension, start_time DESC);
