-- Per-extension sync state, set by every run: one row for each extension
-- that is not plainly synced (pending, failed, drifted, disabled). An
-- applied extension without a row is synced.
CREATE TABLE extension_status (
    number      TEXT PRIMARY KEY,
    status      TEXT NOT NULL,                 -- pending | failed | drifted | disabled
    reason      TEXT,                          -- Asterisk's or the verifier's reason, what differs
    run_id      INTEGER,                       -- the run that set it (NULL: set by an API write)
    declared    TEXT,                          -- JSON: the declared extension when it was never applied
    since       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Why each run did what it did (drift repaired, reload skipped, verification).
ALTER TABLE reconcile_runs ADD COLUMN reasons TEXT NOT NULL DEFAULT '[]';

-- The Reconciling condition: the step a run is in, and since when.
ALTER TABLE reconciler_status ADD COLUMN reconciling_step TEXT;
ALTER TABLE reconciler_status ADD COLUMN reconciling_since TEXT;
