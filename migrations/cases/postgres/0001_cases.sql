-- Cases for pupils of concern. A case is opened once per pupil and concern; every change of
-- stage or status is kept in case_events.

CREATE TABLE cases (
    id                 TEXT PRIMARY KEY,
    laestab            TEXT NOT NULL,
    upn                TEXT NOT NULL,
    concern            TEXT NOT NULL,
    phase              TEXT NOT NULL,
    ladder             TEXT NOT NULL,
    stage              TEXT NOT NULL,
    stage_number       INTEGER NOT NULL,
    owner_role         TEXT NOT NULL,
    status             TEXT NOT NULL,
    opened_at          TIMESTAMPTZ NOT NULL,
    opened_by_trigger  TEXT NOT NULL
);

-- At most one case that is not closed per pupil and concern.
CREATE UNIQUE INDEX cases_one_live ON cases (upn, concern) WHERE status <> 'closed';

CREATE TABLE case_events (
    id           BIGINT PRIMARY KEY,
    case_id      TEXT NOT NULL REFERENCES cases (id),
    event        TEXT NOT NULL,
    detail       TEXT NOT NULL,
    recorded_by  TEXT NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE sync_state (
    feed    TEXT PRIMARY KEY,
    cursor  BIGINT NOT NULL
);
