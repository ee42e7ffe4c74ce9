-- Decisions made in rollcall (mark versions from staff or from parents' reports) written back
-- to the MIS of schools whose connector has write-back on. The follower reads the registers
-- change feed from writeback_cursor and queues each decision as an item. The worker groups a
-- school's queued items into a job, one request to the broker, claimed under a lease, with
-- every attempt logged.

CREATE TABLE writeback_cursor (
    id      INTEGER PRIMARY KEY,
    cursor  BIGINT NOT NULL
);

CREATE TABLE writeback_jobs (
    id               TEXT PRIMARY KEY,
    laestab          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    attempt_base     INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    claimed_at       TIMESTAMPTZ,
    claimed_until    TIMESTAMPTZ,
    last_error       TEXT NOT NULL DEFAULT '',
    writeback_id     TEXT NOT NULL DEFAULT '',
    http_status      INTEGER NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX writeback_jobs_due ON writeback_jobs (status, next_attempt_at);
CREATE INDEX writeback_jobs_by_school ON writeback_jobs (laestab, id);

CREATE TABLE writeback_items (
    sequence      BIGINT PRIMARY KEY,
    laestab       TEXT NOT NULL,
    upn           TEXT NOT NULL,
    session_date  TEXT NOT NULL,
    session       TEXT NOT NULL,
    code          TEXT NOT NULL,
    minutes_late  INTEGER NOT NULL,
    comment       TEXT NOT NULL,
    source        TEXT NOT NULL,
    recorded_by   TEXT NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL,
    mis_id        TEXT NOT NULL DEFAULT '',
    job_id        TEXT REFERENCES writeback_jobs (id),
    status        TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE INDEX writeback_items_by_job ON writeback_items (job_id, sequence);
CREATE INDEX writeback_items_by_session ON writeback_items (laestab, upn, session_date, session);

CREATE TABLE writeback_attempts (
    job_id       TEXT NOT NULL REFERENCES writeback_jobs (id),
    attempt      INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ NOT NULL,
    outcome      TEXT NOT NULL,
    http_status  INTEGER NOT NULL DEFAULT 0,
    detail       TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);

-- The value last written back for each session, so that the connector does not pull it back
-- as a new register version. seen_changed_at is the broker's updated_at of the record that
-- echoed it.
CREATE TABLE writeback_echoes (
    laestab          TEXT NOT NULL,
    mis_id           TEXT NOT NULL,
    session_date     TEXT NOT NULL,
    session          TEXT NOT NULL,
    code             TEXT NOT NULL,
    minutes_late     INTEGER NOT NULL,
    job_id           TEXT NOT NULL,
    sent_at          TIMESTAMPTZ NOT NULL,
    seen_changed_at  TIMESTAMPTZ,
    PRIMARY KEY (laestab, mis_id, session_date, session)
);
