-- The leader of the `serve` replicas on this database (db::leader): one
-- row, written by a replica when it takes the advisory lock. `epoch` is
-- the fencing token: each new leader increments it, and a run's commit
-- checks it in the same transaction, so a deposed leader's late commit is
-- refused.
CREATE TABLE leader (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    epoch       BIGINT NOT NULL,
    instance_id TEXT NOT NULL,
    since       TIMESTAMPTZ NOT NULL
);
