-- Schools, pupils on roll and session marks. Marks are append-only: an amendment is a new
-- row, and effective_marks points at the version in force for each session.

CREATE TABLE schools (
    laestab     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    phase       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE pupils (
    upn            TEXT PRIMARY KEY,
    forename       TEXT NOT NULL,
    surname        TEXT NOT NULL,
    date_of_birth  TEXT NOT NULL,
    sex            TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE enrolments (
    laestab         TEXT NOT NULL REFERENCES schools (laestab),
    upn             TEXT NOT NULL REFERENCES pupils (upn),
    admission_date  TEXT NOT NULL,
    leaving_date    TEXT,
    year_group      TEXT NOT NULL,
    PRIMARY KEY (laestab, upn, admission_date)
);

CREATE TABLE marks (
    sequence              BIGINT PRIMARY KEY,
    laestab               TEXT NOT NULL REFERENCES schools (laestab),
    upn                   TEXT NOT NULL REFERENCES pupils (upn),
    session_date          TEXT NOT NULL,
    session               TEXT NOT NULL CHECK (session IN ('AM', 'PM')),
    code                  TEXT NOT NULL,
    minutes_late          INTEGER NOT NULL DEFAULT 0,
    source                TEXT NOT NULL,
    source_name           TEXT NOT NULL,
    reason                TEXT NOT NULL,
    recorded_by           TEXT NOT NULL,
    recorded_by_position  TEXT NOT NULL,
    recorded_at           TEXT NOT NULL,
    received_at           TEXT NOT NULL,
    effective_when_stored INTEGER NOT NULL
);

CREATE INDEX marks_by_school ON marks (laestab, sequence);
CREATE INDEX marks_by_session ON marks (upn, session_date, session);

CREATE TABLE effective_marks (
    laestab       TEXT NOT NULL,
    upn           TEXT NOT NULL,
    session_date  TEXT NOT NULL,
    session       TEXT NOT NULL,
    sequence      BIGINT NOT NULL REFERENCES marks (sequence),
    recorded_at   TEXT NOT NULL,
    PRIMARY KEY (laestab, upn, session_date, session)
);

CREATE TABLE imports (
    request_id      TEXT PRIMARY KEY,
    laestab         TEXT NOT NULL REFERENCES schools (laestab),
    source_name     TEXT NOT NULL,
    marks_recorded  INTEGER NOT NULL,
    feed_cursor     BIGINT NOT NULL,
    applied_at      TEXT NOT NULL
);
