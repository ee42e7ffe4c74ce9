-- Referral packs built, with the SHA-256 of each pack, so a local authority's query about a
-- pack can be answered from the record.

CREATE TABLE packs (
    id          TEXT PRIMARY KEY,
    laestab     TEXT NOT NULL,
    upn         TEXT NOT NULL,
    policy_id   TEXT NOT NULL,
    clause      TEXT NOT NULL,
    as_of       DATE NOT NULL,
    sha256      TEXT NOT NULL,
    built_at    TIMESTAMPTZ NOT NULL
);
