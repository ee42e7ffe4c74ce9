-- The audit log: one row per audited call, written once and never changed.
--
-- Ids run from 1 with no gaps. Each row keeps the hash of the row before it (previous_hash,
-- 64 zeros for the first) and the SHA-256 of that hash and its own fields (hash), so a row
-- that is changed or removed breaks the chain that `rollcall audit verify` checks. The
-- schools and pupils a call touched are rows of their own, so both can be found by index.
-- Times are stored as text by sqlx.

CREATE TABLE audit_events (
    id             INTEGER PRIMARY KEY,
    at             TEXT NOT NULL,
    subject        TEXT NOT NULL,
    roles          TEXT NOT NULL,
    method         TEXT NOT NULL,
    access         TEXT NOT NULL,
    peer           TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    previous_hash  TEXT NOT NULL,
    hash           TEXT NOT NULL
);

CREATE INDEX audit_events_by_subject ON audit_events (subject, id);
CREATE INDEX audit_events_by_time ON audit_events (at);

CREATE TABLE audit_event_schools (
    event_id  BIGINT NOT NULL REFERENCES audit_events (id),
    laestab   TEXT NOT NULL,
    PRIMARY KEY (event_id, laestab)
);

CREATE INDEX audit_event_schools_by_school ON audit_event_schools (laestab, event_id);

CREATE TABLE audit_event_pupils (
    event_id  BIGINT NOT NULL REFERENCES audit_events (id),
    upn       TEXT NOT NULL,
    PRIMARY KEY (event_id, upn)
);

CREATE INDEX audit_event_pupils_by_pupil ON audit_event_pupils (upn, event_id);

-- Rows of the audit tables are only ever inserted. SQLite has no TRUNCATE, and a DELETE
-- without WHERE fires these triggers too.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE is not allowed');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE is not allowed');
END;

CREATE TRIGGER audit_event_schools_no_update BEFORE UPDATE ON audit_event_schools
BEGIN
    SELECT RAISE(ABORT, 'audit_event_schools is append-only: UPDATE is not allowed');
END;
CREATE TRIGGER audit_event_schools_no_delete BEFORE DELETE ON audit_event_schools
BEGIN
    SELECT RAISE(ABORT, 'audit_event_schools is append-only: DELETE is not allowed');
END;

CREATE TRIGGER audit_event_pupils_no_update BEFORE UPDATE ON audit_event_pupils
BEGIN
    SELECT RAISE(ABORT, 'audit_event_pupils is append-only: UPDATE is not allowed');
END;
CREATE TRIGGER audit_event_pupils_no_delete BEFORE DELETE ON audit_event_pupils
BEGIN
    SELECT RAISE(ABORT, 'audit_event_pupils is append-only: DELETE is not allowed');
END;
