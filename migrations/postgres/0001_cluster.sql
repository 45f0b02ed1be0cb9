-- The composite registration table (seed 000): every node's bindings, each with
-- its owner node. Rows are never deleted by a registration change: a deletion
-- leaves a tombstone (deleted = true) so peers learn of it. `seq` orders every
-- change (from binding_seq, taken under an advisory lock, so seq order is commit
-- order): it is the change log peers catch up from after a reconnect.
CREATE SEQUENCE binding_seq;

CREATE TABLE bindings (
    aor         TEXT    NOT NULL,
    binding_key TEXT    NOT NULL,
    contact     TEXT    NOT NULL,
    instance    TEXT,
    reg_id      INTEGER,
    q           INTEGER,
    call_id     TEXT    NOT NULL,
    cseq        BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL, -- Unix milliseconds
    path        TEXT    NOT NULL, -- Path header values, one per line
    source      TEXT    NOT NULL,
    user_agent  TEXT,
    owner_node  TEXT    NOT NULL,
    version     BIGINT  NOT NULL, -- registration time (µs); the latest wins
    deleted     BOOLEAN NOT NULL DEFAULT false,
    seq         BIGINT  NOT NULL,
    PRIMARY KEY (aor, binding_key)
);

CREATE INDEX bindings_seq ON bindings (seq);
CREATE INDEX bindings_owner ON bindings (owner_node) WHERE NOT deleted;

-- Cluster membership: heartbeats written by each node; a node whose heartbeat is
-- older than the timeout is dead, and the first peer to mark it (alive = false)
-- purges its bindings, once.
CREATE TABLE nodes (
    node_id      TEXT        PRIMARY KEY,
    sip_addr     TEXT        NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    alive        BOOLEAN     NOT NULL DEFAULT true
);

-- Accounts for administration beside the config file's [[users]].
CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password TEXT NOT NULL
);
