-- Per-extension sync state, set by every run: one row for each extension
-- that is not plainly synced (pending, failed, drifted, disabled). An
-- applied extension without a row is synced.
CREATE TABLE extension_status (
    number      TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    reason      TEXT,
    run_id      BIGINT,
    declared    JSONB,
    since       TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

ALTER TABLE reconcile_runs ADD COLUMN reasons JSONB NOT NULL DEFAULT '[]';

ALTER TABLE reconciler_status ADD COLUMN reconciling_step TEXT;
ALTER TABLE reconciler_status ADD COLUMN reconciling_since TIMESTAMPTZ;
