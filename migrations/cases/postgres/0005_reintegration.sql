-- Reintegration programmes after an extended absence: tailored steps and check-ins.

CREATE TABLE reintegrations (
    id          TEXT PRIMARY KEY,
    case_id     TEXT NOT NULL REFERENCES cases (id),
    upn         TEXT NOT NULL,
    absence     TEXT NOT NULL,
    starts_on   DATE NOT NULL,
    status      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE reintegration_steps (
    reintegration_id  TEXT NOT NULL REFERENCES reintegrations (id),
    position          INTEGER NOT NULL,
    description       TEXT NOT NULL,
    due_on            DATE NOT NULL,
    done_on           DATE,
    PRIMARY KEY (reintegration_id, position)
);

CREATE TABLE reintegration_check_ins (
    reintegration_id  TEXT NOT NULL REFERENCES reintegrations (id),
    on_date           DATE NOT NULL,
    held_by           TEXT NOT NULL,
    notes             TEXT NOT NULL,
    recorded_at       TIMESTAMPTZ NOT NULL
);
