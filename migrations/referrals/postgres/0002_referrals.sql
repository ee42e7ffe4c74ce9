-- Referrals to the local authority and statutory returns: their prerequisites as checked,
-- who submitted or overrode them, the outcomes the local authority reported, and the exact
-- pack each submission sent.

CREATE TABLE referrals (
    id                TEXT PRIMARY KEY,
    reference         TEXT NOT NULL UNIQUE,
    request_id        TEXT UNIQUE,
    kind              TEXT NOT NULL,
    laestab           TEXT NOT NULL,
    upn               TEXT NOT NULL,
    case_id           TEXT NOT NULL,
    status            TEXT NOT NULL,
    policy_id         TEXT NOT NULL,
    as_of             DATE NOT NULL,
    prerequisites     TEXT NOT NULL,
    created_by        TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    submitted_by      TEXT NOT NULL DEFAULT '',
    submitted_at      TIMESTAMPTZ,
    override_by       TEXT NOT NULL DEFAULT '',
    override_role     TEXT NOT NULL DEFAULT '',
    override_reason   TEXT NOT NULL DEFAULT '',
    pack_id           TEXT NOT NULL DEFAULT '',
    pack_sha256       TEXT NOT NULL DEFAULT '',
    notice_issued_on  DATE,
    notice_number     INTEGER,
    reduced_amount    INTEGER,
    reduced_days      INTEGER,
    full_amount       INTEGER,
    full_days         INTEGER,
    notice_policy_id  TEXT NOT NULL DEFAULT '',
    notice_clause     TEXT NOT NULL DEFAULT '',
    paid_on           DATE,
    updated_at        TIMESTAMPTZ NOT NULL
);

-- At most one open referral per pupil, school and kind.
CREATE UNIQUE INDEX referrals_one_open ON referrals (upn, laestab, kind)
    WHERE status NOT IN ('paid', 'prosecution', 'withdrawn');
CREATE INDEX referrals_by_school ON referrals (laestab, created_at);

CREATE TABLE referral_outcomes (
    referral_id  TEXT NOT NULL REFERENCES referrals (id),
    position     INTEGER NOT NULL,
    request_id   TEXT UNIQUE,
    outcome      TEXT NOT NULL,
    on_date      DATE NOT NULL,
    note         TEXT NOT NULL,
    recorded_by  TEXT NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (referral_id, position)
);

ALTER TABLE packs ADD COLUMN referral_id TEXT;
ALTER TABLE packs ADD COLUMN content BYTEA;
