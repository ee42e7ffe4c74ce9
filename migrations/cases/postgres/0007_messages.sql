-- Messages to parents and carers: first-day contact after an unexplained absence, and letters
-- filed on a case. Each message is one recipient on one channel, created once (dedupe_key),
-- claimed by one sender at a time, and logged attempt by attempt.

CREATE TABLE message_templates (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    channel     TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    subject     TEXT NOT NULL,
    body        TEXT NOT NULL,
    loaded_by   TEXT NOT NULL,
    loaded_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE contact_tasks (
    id            TEXT PRIMARY KEY,
    laestab       TEXT NOT NULL,
    upn           TEXT NOT NULL,
    absence_date  DATE NOT NULL,
    session       TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    outcome       TEXT NOT NULL DEFAULT '',
    completed_by  TEXT NOT NULL DEFAULT '',
    completed_at  TIMESTAMPTZ,
    UNIQUE (upn, absence_date)
);

CREATE INDEX contact_tasks_by_school ON contact_tasks (laestab, status, absence_date);

CREATE TABLE first_day_sweeps (
    laestab       TEXT NOT NULL,
    absence_date  DATE NOT NULL,
    session       TEXT NOT NULL,
    swept_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (laestab, absence_date, session)
);

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    dedupe_key          TEXT NOT NULL UNIQUE,
    laestab             TEXT NOT NULL,
    upn                 TEXT NOT NULL,
    case_id             TEXT,
    task_id             TEXT,
    purpose             TEXT NOT NULL,
    channel             TEXT NOT NULL,
    recipient_priority  INTEGER NOT NULL,
    recipient_name      TEXT NOT NULL,
    recipient_address   TEXT NOT NULL,
    template            TEXT NOT NULL,
    template_version    INTEGER NOT NULL,
    subject             TEXT NOT NULL,
    body                TEXT NOT NULL,
    document            BYTEA,
    status              TEXT NOT NULL,
    review_reasons      TEXT NOT NULL DEFAULT '',
    attempts            INTEGER NOT NULL DEFAULT 0,
    attempt_base        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ NOT NULL,
    claimed_until       TIMESTAMPTZ,
    provider_reference  TEXT NOT NULL DEFAULT '',
    last_error          TEXT NOT NULL DEFAULT '',
    created_by          TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    reviewed_by         TEXT NOT NULL DEFAULT '',
    reviewed_at         TIMESTAMPTZ,
    sent_at             TIMESTAMPTZ
);

CREATE INDEX messages_due ON messages (status, next_attempt_at);
CREATE INDEX messages_by_pupil ON messages (upn, created_at);
CREATE INDEX messages_by_case ON messages (case_id);

CREATE TABLE message_attempts (
    message_id  TEXT NOT NULL REFERENCES messages (id),
    attempt     INTEGER NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL,
    PRIMARY KEY (message_id, attempt)
);

-- Threshold letters a trigger asks for, recorded with the trigger and written by the letter
-- worker, which reads the pupil, contacts and figures from the other services.
CREATE TABLE letter_jobs (
    id               TEXT PRIMARY KEY,
    case_id          TEXT NOT NULL REFERENCES cases (id),
    template         TEXT NOT NULL,
    letter_date      DATE NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    last_error       TEXT NOT NULL DEFAULT '',
    created_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX letter_jobs_due ON letter_jobs (status, next_attempt_at);
