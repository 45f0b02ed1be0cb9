-- The embedded store: bindings survive a restart with their remaining expiry.
CREATE TABLE bindings (
    aor         TEXT    NOT NULL,
    binding_key TEXT    NOT NULL,
    contact     TEXT    NOT NULL,
    instance    TEXT,
    reg_id      INTEGER,
    q           INTEGER,
    call_id     TEXT    NOT NULL,
    cseq        INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL, -- Unix milliseconds
    path        TEXT    NOT NULL, -- Path header values, one per line
    source      TEXT    NOT NULL,
    user_agent  TEXT,
    owner_node  TEXT    NOT NULL,
    PRIMARY KEY (aor, binding_key)
) WITHOUT ROWID;

CREATE INDEX bindings_expires_at ON bindings (expires_at);

-- Accounts for administration beside the config file's [[users]]; the config wins
-- for a username present in both.
CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password TEXT NOT NULL
) WITHOUT ROWID;
