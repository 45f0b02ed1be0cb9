-- The version of each registration (microseconds, see location::next_version):
-- kept so a restarted node settles conflicts the same way the cluster does.
ALTER TABLE bindings ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
