-- Every call, whatever its path (issue 19): one `calls` row per call, keyed
-- by Asterisk's linkedid (kept in channel_id: the linkedid is the uniqueid of
-- the call's first channel, which is what the Stasis logger stored), and one
-- `call_legs` row per channel of the call: who rang, who answered, who was
-- transferred to.
ALTER TABLE calls ADD COLUMN answered_by TEXT;
ALTER TABLE calls ADD COLUMN hangup_by TEXT;
ALTER TABLE calls ADD COLUMN transfers BIGINT NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN source TEXT NOT NULL DEFAULT 'stasis';
CREATE INDEX calls_open ON calls (start_time) WHERE end_time IS NULL;

CREATE TABLE call_legs (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    linkedid       TEXT NOT NULL,
    uniqueid       TEXT NOT NULL UNIQUE,
    channel        TEXT NOT NULL,
    extension      TEXT,
    role           TEXT NOT NULL,
    caller         TEXT,
    dialled        TEXT,
    start_time     TIMESTAMPTZ NOT NULL,
    answer_time    TIMESTAMPTZ,
    end_time       TIMESTAMPTZ,
    talk_seconds   BIGINT,
    hangup_cause   BIGINT,
    hangup_source  TEXT,
    dial_status    TEXT,
    transferred_at TIMESTAMPTZ,
    transfer_to    TEXT
);
CREATE INDEX call_legs_call ON call_legs (linkedid);
CREATE INDEX call_legs_extension ON call_legs (extension, start_time DESC);
