-- Which node made each change: a node reads the changes the others made, which
-- includes another node's deletion of a binding this node owns (its phone moved
-- and unregistered there).
ALTER TABLE bindings ADD COLUMN changed_by TEXT NOT NULL DEFAULT '';
CREATE INDEX bindings_seq_changed_by ON bindings (seq, changed_by);

-- How far each node has applied the others' changes: tombstones every other live
-- node has applied are no longer needed (a node that joins later loads a
-- snapshot, which skips them) and are pruned.
ALTER TABLE nodes ADD COLUMN applied_seq BIGINT NOT NULL DEFAULT 0;
