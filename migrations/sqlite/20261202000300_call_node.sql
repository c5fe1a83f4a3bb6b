-- Calls per node (issue 17): each Asterisk of `nodes:` has its own CEL
-- logger, and a linkedid (a uniqueid, `<epoch>.<counter>` unless
-- asterisk.conf sets `systemname`) is unique only on the Asterisk that made
-- it. So a call is keyed by (node, linkedid) and a leg by (node, uniqueid).
-- Rows written before this are the first node's (only its CEL was logged):
-- they keep node NULL here, and the daemon names them after its first node
-- when its loggers start (`Db::claim_calls`). SQLite cannot drop a UNIQUE
-- constraint: both tables are rebuilt, ids kept.
CREATE TABLE calls_by_node (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    node             TEXT,
    channel_id       TEXT NOT NULL,
    extension        TEXT,
    caller           TEXT,
    callee           TEXT,
    direction        TEXT NOT NULL,
    start_time       TEXT NOT NULL,
    answer_time      TEXT,
    end_time         TEXT,
    duration_seconds INTEGER,
    hangup_cause     INTEGER,
    disposition      TEXT,
    updated_at       TEXT NOT NULL,
    answered_by      TEXT,
    hangup_by        TEXT,
    transfers        INTEGER NOT NULL DEFAULT 0,
    source           TEXT NOT NULL DEFAULT 'stasis',
    UNIQUE (node, channel_id)
);
INSERT INTO calls_by_node (id, channel_id, extension, caller, callee, direction, start_time, answer_time, end_time,
                           duration_seconds, hangup_cause, disposition, updated_at, answered_by, hangup_by, transfers, source)
SELECT id, channel_id, extension, caller, callee, direction, start_time, answer_time, end_time,
       duration_seconds, hangup_cause, disposition, updated_at, answered_by, hangup_by, transfers, source
FROM calls;
DROP TABLE calls;
ALTER TABLE calls_by_node RENAME TO calls;
CREATE INDEX calls_start ON calls (start_time DESC);
CREATE INDEX calls_extension ON calls (extension, start_time DESC);
CREATE INDEX calls_open ON calls (start_time) WHERE end_time IS NULL;
CREATE INDEX calls_channel ON calls (channel_id);

CREATE TABLE call_legs_by_node (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    node           TEXT,
    linkedid       TEXT NOT NULL,
    uniqueid       TEXT NOT NULL,
    channel        TEXT NOT NULL,
    extension      TEXT,
    role           TEXT NOT NULL,
    caller         TEXT,
    dialled        TEXT,
    start_time     TEXT NOT NULL,
    answer_time    TEXT,
    end_time       TEXT,
    talk_seconds   INTEGER,
    hangup_cause   INTEGER,
    hangup_source  TEXT,
    dial_status    TEXT,
    transferred_at TEXT,
    transfer_to    TEXT,
    UNIQUE (node, uniqueid)
);
INSERT INTO call_legs_by_node (id, linkedid, uniqueid, channel, extension, role, caller, dialled, start_time, answer_time,
                               end_time, talk_seconds, hangup_cause, hangup_source, dial_status, transferred_at, transfer_to)
SELECT id, linkedid, uniqueid, channel, extension, role, caller, dialled, start_time, answer_time,
       end_time, talk_seconds, hangup_cause, hangup_source, dial_status, transferred_at, transfer_to
FROM call_legs;
DROP TABLE call_legs;
ALTER TABLE call_legs_by_node RENAME TO call_legs;
CREATE INDEX call_legs_call ON call_legs (node, linkedid);
CREATE INDEX call_legs_extension ON call_legs (extension, start_time DESC);
