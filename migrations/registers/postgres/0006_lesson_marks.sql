-- Attendance taken at lessons and spot checks after registration, and the possible
-- post-registration truancy each one reveals.

CREATE TABLE lesson_checks (
    id           TEXT PRIMARY KEY,
    request_id   TEXT NOT NULL UNIQUE,
    laestab      TEXT NOT NULL REFERENCES schools (laestab),
    check_date   DATE NOT NULL,
    session      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    label        TEXT NOT NULL,
    taken_at     TIMESTAMPTZ NOT NULL,
    recorded_by  TEXT NOT NULL,
    recorded_by_position TEXT NOT NULL
);

CREATE TABLE lesson_marks (
    check_id  TEXT NOT NULL REFERENCES lesson_checks (id),
    upn       TEXT NOT NULL REFERENCES pupils (upn),
    present   BOOLEAN NOT NULL,
    PRIMARY KEY (check_id, upn)
);

CREATE TABLE truancy_flags (
    id              TEXT PRIMARY KEY,
    check_id        TEXT NOT NULL REFERENCES lesson_checks (id),
    laestab         TEXT NOT NULL,
    upn             TEXT NOT NULL,
    flag_date       DATE NOT NULL,
    session         TEXT NOT NULL,
    register_code   TEXT NOT NULL,
    raised_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX truancy_flags_by_school ON truancy_flags (laestab, flag_date);
