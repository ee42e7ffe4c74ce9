-- Connectors that pull each school's pupils, marks and deletions from its MIS data broker.
-- connector_state holds one school's watermarks (the updated_after and page each list
-- resumes from, moved after every page applied) and the lease of the server running it.

CREATE TABLE connector_state (
    laestab               TEXT PRIMARY KEY,
    students_after        TIMESTAMPTZ,
    students_page         INTEGER NOT NULL DEFAULT 1,
    marks_after           TIMESTAMPTZ,
    marks_page            INTEGER NOT NULL DEFAULT 1,
    deletions_after       TIMESTAMPTZ,
    deletions_page        INTEGER NOT NULL DEFAULT 1,
    running_run_id        TEXT,
    running_until         TIMESTAMPTZ,
    not_before            TIMESTAMPTZ,
    writeback_enabled_at  TIMESTAMPTZ,
    updated_at            TIMESTAMPTZ NOT NULL
);

CREATE TABLE connector_runs (
    id                TEXT PRIMARY KEY,
    laestab           TEXT NOT NULL,
    run_trigger       TEXT NOT NULL,
    status            TEXT NOT NULL,
    full_read         BOOLEAN NOT NULL DEFAULT FALSE,
    started_at        TIMESTAMPTZ NOT NULL,
    finished_at       TIMESTAMPTZ,
    requests          INTEGER NOT NULL DEFAULT 0,
    retries           INTEGER NOT NULL DEFAULT 0,
    pages             INTEGER NOT NULL DEFAULT 0,
    pupils_applied    INTEGER NOT NULL DEFAULT 0,
    pupils_unchanged  INTEGER NOT NULL DEFAULT 0,
    pupils_rejected   INTEGER NOT NULL DEFAULT 0,
    marks_applied     INTEGER NOT NULL DEFAULT 0,
    marks_unchanged   INTEGER NOT NULL DEFAULT 0,
    marks_rejected    INTEGER NOT NULL DEFAULT 0,
    marks_echoed      INTEGER NOT NULL DEFAULT 0,
    deletions         INTEGER NOT NULL DEFAULT 0,
    error             TEXT NOT NULL DEFAULT '',
    rejections        TEXT NOT NULL DEFAULT '[]'
);

CREATE INDEX connector_runs_by_school ON connector_runs (laestab, id);

-- Where each of the broker's mark records is, so that a deleted mark can be named.
CREATE TABLE connector_mark_ids (
    laestab       TEXT NOT NULL,
    record_id     TEXT NOT NULL,
    mis_id        TEXT NOT NULL,
    session_date  TEXT NOT NULL,
    session       TEXT NOT NULL,
    PRIMARY KEY (laestab, record_id)
);

-- Records the MIS deleted, kept for a person to review.
CREATE TABLE connector_deletions (
    laestab       TEXT NOT NULL,
    record_type   TEXT NOT NULL,
    record_id     TEXT NOT NULL,
    mis_id        TEXT NOT NULL DEFAULT '',
    upn           TEXT NOT NULL DEFAULT '',
    session_date  TEXT NOT NULL DEFAULT '',
    session       TEXT NOT NULL DEFAULT '',
    deleted_at    TIMESTAMPTZ NOT NULL,
    restored_at   TIMESTAMPTZ,
    action        TEXT NOT NULL,
    seen_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (laestab, record_type, record_id)
);
