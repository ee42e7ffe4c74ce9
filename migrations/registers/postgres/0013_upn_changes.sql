-- Changes of a pupil's UPN, such as a temporary UPN replaced by the permanent one. The pupil's
-- records move to the new UPN in the change's transaction; this table keeps the change, in id
-- order, for other services to follow. A from_upn here is never used again.

CREATE TABLE upn_changes (
    id               BIGINT PRIMARY KEY,
    request_id       TEXT NOT NULL UNIQUE,
    from_upn         TEXT NOT NULL UNIQUE,
    to_upn           TEXT NOT NULL,
    merged           BOOLEAN NOT NULL,
    source           TEXT NOT NULL,
    reason           TEXT NOT NULL,
    recorded_by      TEXT NOT NULL,
    changed_at       TIMESTAMPTZ NOT NULL,
    mark_versions    INTEGER NOT NULL,
    sessions         INTEGER NOT NULL,
    enrolments       INTEGER NOT NULL,
    absence_reports  INTEGER NOT NULL,
    lesson_marks     INTEGER NOT NULL,
    truancy_flags    INTEGER NOT NULL,
    contacts         INTEGER NOT NULL
);
