-- Route patterns for administration beside the config file's [[routes]]
-- (docs/dial-plan.md). Not read yet: the dial plan is built from the config only.
-- `position` orders rows like the config file's order: it breaks specificity ties.
CREATE TABLE routes (
    position      INTEGER PRIMARY KEY,
    pattern       TEXT    NOT NULL UNIQUE,
    gateway_group TEXT    NOT NULL,
    strip         INTEGER NOT NULL DEFAULT 0 CHECK (strip >= 0),
    prefix        TEXT    NOT NULL DEFAULT ''
);
