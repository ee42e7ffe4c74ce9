-- The policy service's own copy of each session's effective code, kept from the registers'
-- change feed, and each pupil's totals per academic year kept with it. Triggers are evaluated
-- from these without reading the registers again.

CREATE TABLE pupil_marks (
    laestab       TEXT NOT NULL,
    upn           TEXT NOT NULL,
    session_date  DATE NOT NULL,
    session       TEXT NOT NULL,
    code          TEXT NOT NULL,
    sequence      BIGINT NOT NULL,
    PRIMARY KEY (laestab, upn, session_date, session)
);

CREATE TABLE pupil_totals (
    laestab            TEXT NOT NULL,
    upn                TEXT NOT NULL,
    academic_year      INTEGER NOT NULL,
    present            INTEGER NOT NULL,
    approved_activity  INTEGER NOT NULL,
    authorised         INTEGER NOT NULL,
    unauthorised       INTEGER NOT NULL,
    not_possible       INTEGER NOT NULL,
    PRIMARY KEY (laestab, upn, academic_year)
);

-- Follow the feed again from the start, so that the copy holds every mark already stored.
-- Triggers are not repeated: each pupil's last status is kept in pupil_status.
DELETE FROM sync_state WHERE feed = 'registers.marks';
