-- Casework: the actions staff record on a case, the reason and stage of every change, the
-- case's next review, and ladders loaded to replace the shipped defaults.

ALTER TABLE case_events ADD COLUMN stage TEXT NOT NULL DEFAULT '';
ALTER TABLE case_events ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE cases ADD COLUMN stage_started_on TEXT;
ALTER TABLE cases ADD COLUMN next_review TEXT;
ALTER TABLE cases ADD COLUMN opened_by TEXT NOT NULL DEFAULT '';

CREATE TABLE case_actions (
    id                TEXT PRIMARY KEY,
    request_id        TEXT NOT NULL UNIQUE,
    case_id           TEXT NOT NULL REFERENCES cases (id),
    stage             TEXT NOT NULL,
    kind              TEXT NOT NULL,
    taken_on          TEXT NOT NULL,
    outcome           TEXT NOT NULL,
    notes             TEXT NOT NULL,
    with_aio          INTEGER NOT NULL,
    next_review       TEXT,
    recorded_by       TEXT NOT NULL,
    recorded_by_role  TEXT NOT NULL,
    recorded_at       TEXT NOT NULL
);

CREATE INDEX case_actions_by_case ON case_actions (case_id, taken_on);

CREATE TABLE ladders (
    id         TEXT PRIMARY KEY,
    source     TEXT NOT NULL,
    loaded_by  TEXT NOT NULL,
    loaded_at  TEXT NOT NULL
);
