-- Reintegration programmes after an extended absence: tailored steps and check-ins.

CREATE TABLE reintegrations (
    id          TEXT PRIMARY KEY,
    case_id     TEXT NOT NULL REFERENCES cases (id),
    upn         TEXT NOT NULL,
    absence     TEXT NOT NULL,
    starts_on   TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE reintegration_steps (
    reintegration_id  TEXT NOT NULL REFERENCES reintegrations (id),
    position          INTEGER NOT NULL,
    description       TEXT NOT NULL,
    due_on            TEXT NOT NULL,
    done_on           TEXT,
    PRIMARY KEY (reintegration_id, position)
);

CREATE TABLE reintegration_check_ins (
    reintegration_id  TEXT NOT NULL REFERENCES reintegrations (id),
    on_date           TEXT NOT NULL,
    held_by           TEXT NOT NULL,
    notes             TEXT NOT NULL,
    recorded_at       TEXT NOT NULL
);
