-- Attendance Improvement Plans on cases, with their reviews.

CREATE TABLE plans (
    id                         TEXT PRIMARY KEY,
    case_id                    TEXT NOT NULL REFERENCES cases (id),
    upn                        TEXT NOT NULL,
    laestab                    TEXT NOT NULL,
    attendance_target_percent  INTEGER NOT NULL,
    max_lates                  INTEGER,
    start_date                 DATE NOT NULL,
    review_date                DATE NOT NULL,
    owner_name                 TEXT NOT NULL,
    owner_role                 TEXT NOT NULL,
    status                     TEXT NOT NULL,
    created_by                 TEXT NOT NULL,
    created_at                 TIMESTAMPTZ NOT NULL
);

CREATE TABLE plan_reviews (
    plan_id             TEXT NOT NULL REFERENCES plans (id),
    reviewed_on         DATE NOT NULL,
    attendance_tenths   INTEGER,
    lates               INTEGER NOT NULL,
    attendance_met      BOOLEAN NOT NULL,
    punctuality_met     BOOLEAN NOT NULL,
    reviewed_by         TEXT NOT NULL,
    notes               TEXT NOT NULL,
    next_review         DATE,
    recorded_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (plan_id, reviewed_on)
);
