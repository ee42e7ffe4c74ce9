-- Policy versions loaded from files, and each school's moves from one policy to another.
-- The policies shipped with rollcall are not stored here: they are always available.

CREATE TABLE policy_versions (
    policy_id       TEXT NOT NULL,
    version         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    effective_from  DATE NOT NULL,
    effective_to    DATE,
    source          TEXT NOT NULL,
    loaded_by       TEXT NOT NULL,
    loaded_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (policy_id, version)
);

CREATE TABLE school_policies (
    laestab      TEXT NOT NULL,
    from_date    DATE NOT NULL,
    policy_id    TEXT NOT NULL,
    assigned_by  TEXT NOT NULL,
    reason       TEXT NOT NULL,
    assigned_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (laestab, from_date)
);
