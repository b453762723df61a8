-- Dashboard sessions signed out before they expired (api/session.go): a copy of such a
-- session's cookie is refused until expires_at, after which the row may go.
CREATE TABLE revoked_sessions (
    id         TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX revoked_sessions_expiry ON revoked_sessions (expires_at);
