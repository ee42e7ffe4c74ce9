-- Absences reported by parents and carers. A report never sets a code; the mark that follows
-- a decision links to it.

CREATE TABLE absence_reports (
    id             TEXT PRIMARY KEY,
    request_id     TEXT NOT NULL UNIQUE,
    laestab        TEXT NOT NULL REFERENCES schools (laestab),
    upn            TEXT NOT NULL REFERENCES pupils (upn),
    channel        TEXT NOT NULL,
    reported_by    TEXT NOT NULL,
    relationship   TEXT NOT NULL,
    reason         TEXT NOT NULL,
    reported_at    TEXT NOT NULL,
    received_at    TEXT NOT NULL,
    first_date     TEXT NOT NULL,
    first_session  TEXT NOT NULL,
    last_date      TEXT NOT NULL,
    last_session   TEXT NOT NULL
);

CREATE INDEX absence_reports_by_pupil ON absence_reports (laestab, upn, first_date);

ALTER TABLE marks ADD COLUMN absence_report_id TEXT REFERENCES absence_reports (id);
