-- A counter each node increments with every heartbeat (and when it announces
-- itself). Peers judge liveness by whether it changes, timed by their own
-- monotonic clocks (src/cluster/membership.rs): one clock source decides, not the
-- database's now(). A purge claims a dead node only if its counter is still the
-- one it was judged dead by. heartbeat_at stays for operators (when it last beat,
-- by the database's clock) and decides nothing.
ALTER TABLE nodes ADD COLUMN beat BIGINT NOT NULL DEFAULT 0;
