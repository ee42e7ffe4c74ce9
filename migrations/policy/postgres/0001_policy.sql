-- Where each pupil stood against each threshold when last evaluated, and the triggers raised
-- or withdrawn when that changed. Triggers are append-only and form a feed.

CREATE TABLE pupil_status (
    laestab             TEXT NOT NULL,
    upn                 TEXT NOT NULL,
    persistent_absence  BOOLEAN NOT NULL,
    severe_absence      BOOLEAN NOT NULL,
    penalty_warning     BOOLEAN NOT NULL,
    as_of               DATE NOT NULL,
    PRIMARY KEY (laestab, upn)
);

CREATE TABLE triggers (
    sequence    BIGINT PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    laestab     TEXT NOT NULL,
    upn         TEXT NOT NULL,
    year_group  TEXT NOT NULL,
    phase       TEXT NOT NULL,
    policy_id   TEXT NOT NULL,
    clause      TEXT NOT NULL,
    as_of       DATE NOT NULL,
    figures     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE sync_state (
    feed    TEXT PRIMARY KEY,
    cursor  BIGINT NOT NULL
);
