-- The leader (db::leader). With SQLite there is one daemon, always the
-- leader; it still takes an epoch at start, so commits are checked alike.
CREATE TABLE leader (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    epoch       INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    since       TEXT NOT NULL
);
