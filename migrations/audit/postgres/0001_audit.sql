-- The audit log: one row per audited call, written once and never changed.
--
-- Ids run from 1 with no gaps. Each row keeps the hash of the row before it (previous_hash,
-- 64 zeros for the first) and the SHA-256 of that hash and its own fields (hash), so a row
-- that is changed or removed breaks the chain that `rollcall audit verify` checks. The
-- schools and pupils a call touched are rows of their own, so both can be found by index.

CREATE TABLE audit_events (
    id             BIGINT PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL,
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

-- Rows of the audit tables are only ever inserted. The triggers reject UPDATE, DELETE and
-- TRUNCATE, which row triggers alone would let through.
CREATE FUNCTION reject_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING HINT = 'The audit log keeps every event; nothing in it may be changed or removed.';
END;
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION reject_audit_change();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION reject_audit_change();

CREATE TRIGGER audit_event_schools_append_only
    BEFORE UPDATE OR DELETE ON audit_event_schools
    FOR EACH ROW EXECUTE FUNCTION reject_audit_change();
CREATE TRIGGER audit_event_schools_no_truncate
    BEFORE TRUNCATE ON audit_event_schools
    FOR EACH STATEMENT EXECUTE FUNCTION reject_audit_change();

CREATE TRIGGER audit_event_pupils_append_only
    BEFORE UPDATE OR DELETE ON audit_event_pupils
    FOR EACH ROW EXECUTE FUNCTION reject_audit_change();
CREATE TRIGGER audit_event_pupils_no_truncate
    BEFORE TRUNCATE ON audit_event_pupils
    FOR EACH STATEMENT EXECUTE FUNCTION reject_audit_change();
