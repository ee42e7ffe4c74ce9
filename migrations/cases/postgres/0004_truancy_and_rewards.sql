-- Post-registration truancy incidents (one per registers flag) and rewards given.

CREATE TABLE truancy_incidents (
    id                    TEXT PRIMARY KEY,
    flag_id               TEXT NOT NULL UNIQUE,
    laestab               TEXT NOT NULL,
    upn                   TEXT NOT NULL,
    incident_date         DATE NOT NULL,
    sanction              TEXT NOT NULL,
    parents_informed_on   DATE NOT NULL,
    parents_informed_how  TEXT NOT NULL,
    support_offered       TEXT NOT NULL,
    recorded_by           TEXT NOT NULL,
    role                  TEXT NOT NULL,
    recorded_at           TIMESTAMPTZ NOT NULL
);

CREATE TABLE given_rewards (
    id           TEXT PRIMARY KEY,
    laestab      TEXT NOT NULL,
    upn          TEXT NOT NULL,
    reward       TEXT NOT NULL,
    period_from  DATE NOT NULL,
    period_to    DATE NOT NULL,
    given_on     DATE NOT NULL,
    given_by     TEXT NOT NULL,
    notes        TEXT NOT NULL,
    UNIQUE (laestab, upn, reward, period_from, period_to)
);
