-- Calls per node (issue 17): each Asterisk of `nodes:` has its own CEL
-- logger, and a linkedid (a uniqueid, `<epoch>.<counter>` unless
-- asterisk.conf sets `systemname`) is unique only on the Asterisk that made
-- it. So a call is keyed by (node, linkedid) and a leg by (node, uniqueid).
-- Rows written before this are the first node's (only its CEL was logged):
-- they keep node NULL here, and the daemon names them after its first node
-- when its loggers start (`Db::claim_calls`).
ALTER TABLE calls ADD COLUMN node TEXT;
ALTER TABLE calls DROP CONSTRAINT calls_channel_id_key;
CREATE UNIQUE INDEX calls_node_call ON calls (node, channel_id);
CREATE INDEX calls_channel ON calls (channel_id);

ALTER TABLE call_legs ADD COLUMN node TEXT;
ALTER TABLE call_legs DROP CONSTRAINT call_legs_uniqueid_key;
CREATE UNIQUE INDEX call_legs_node_leg ON call_legs (node, uniqueid);
DROP INDEX call_legs_call;
CREATE INDEX call_legs_call ON call_legs (node, linkedid);
