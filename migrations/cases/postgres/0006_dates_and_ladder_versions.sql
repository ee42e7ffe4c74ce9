-- The dates people give for each step of a case, whether an action reached the parents, and
-- ladders kept by version so that a case keeps the ladder it opened under.

ALTER TABLE cases ADD COLUMN opened_on DATE;
ALTER TABLE cases ADD COLUMN ladder_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE case_events ADD COLUMN on_date DATE;
ALTER TABLE case_actions ADD COLUMN parents_reached BOOLEAN NOT NULL DEFAULT TRUE;

CREATE TABLE ladder_versions (
    id         TEXT NOT NULL,
    version    INTEGER NOT NULL,
    source     TEXT NOT NULL,
    loaded_by  TEXT NOT NULL,
    loaded_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (id, version)
);

INSERT INTO ladder_versions (id, version, source, loaded_by, loaded_at)
    SELECT id, 1, source, loaded_by, loaded_at FROM ladders;
UPDATE cases SET ladder_version = 1 WHERE ladder IN (SELECT id FROM ladder_versions);
UPDATE cases SET opened_on = stage_started_on WHERE opened_on IS NULL;
DROP TABLE ladders;
