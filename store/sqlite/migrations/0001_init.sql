CREATE TABLE jobs (
    train_id    TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revision    INTEGER NOT NULL,
    data        BLOB NOT NULL
);
CREATE INDEX jobs_created ON jobs (created_at DESC, train_id DESC);
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_endpoint ON jobs (endpoint_id, created_at DESC);

CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    train_id TEXT NOT NULL,
    time     INTEGER NOT NULL,
    type     TEXT NOT NULL,
    status   TEXT NOT NULL,
    message  TEXT NOT NULL,
    data     BLOB
);
CREATE INDEX events_job ON events (train_id, id);

CREATE TABLE logs (
    train_id TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    time     INTEGER NOT NULL,
    stream   TEXT NOT NULL,
    text     TEXT NOT NULL,
    PRIMARY KEY (train_id, seq)
);
