-- The same tables as the SQLite driver's. Free text from outside (event messages, log
-- lines) is kept as bytes: PostgreSQL's text refuses NUL and invalid UTF-8, which a
-- runtime's stderr can carry.
CREATE TABLE jobs (
    train_id    TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revision    BIGINT NOT NULL,
    data        BYTEA NOT NULL
);
CREATE INDEX jobs_created ON jobs (created_at DESC, train_id DESC);
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_endpoint ON jobs (endpoint_id, created_at DESC);

CREATE TABLE events (
    id       BIGSERIAL PRIMARY KEY,
    train_id TEXT NOT NULL,
    time     BIGINT NOT NULL,
    type     TEXT NOT NULL,
    status   TEXT NOT NULL,
    message  BYTEA NOT NULL,
    data     BYTEA
);
CREATE INDEX events_job ON events (train_id, id);

CREATE TABLE logs (
    train_id TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    time     BIGINT NOT NULL,
    stream   TEXT NOT NULL,
    text     BYTEA NOT NULL,
    PRIMARY KEY (train_id, seq)
);

-- Dashboard sessions signed out before they expired (api/session.go).
CREATE TABLE revoked_sessions (
    id         TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_sessions_expiry ON revoked_sessions (expires_at);

-- The active replica (lead.go): epoch grows by one at every takeover, and every write
-- checks it, so that a replica that lost the lead cannot write after its successor began.
CREATE TABLE leader (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    epoch  BIGINT NOT NULL,
    holder TEXT NOT NULL,
    since  TIMESTAMPTZ NOT NULL
);
INSERT INTO leader (id, epoch, holder, since) VALUES (1, 0, '', now());
