-- Referral packs on their way to the local authority. A pack is stored once by SHA-256 and
-- delivered once per destination; each delivery is claimed by one server at a time, under a
-- lease, and every attempt is logged.

CREATE TABLE delivery_packs (
    sha256      TEXT PRIMARY KEY,
    pack        BYTEA NOT NULL,
    size_bytes  BIGINT NOT NULL,
    stored_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE deliveries (
    id                TEXT PRIMARY KEY,
    referral_id       TEXT NOT NULL,
    pack_id           TEXT NOT NULL,
    laestab           TEXT NOT NULL,
    file_name         TEXT NOT NULL,
    sha256            TEXT NOT NULL REFERENCES delivery_packs (sha256),
    destination       TEXT NOT NULL,
    destination_kind  TEXT NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    attempt_base      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TIMESTAMPTZ NOT NULL,
    claimed_at        TIMESTAMPTZ,
    claimed_until     TIMESTAMPTZ,
    last_error        TEXT NOT NULL DEFAULT '',
    superseded_by     TEXT,
    receipt_id        TEXT NOT NULL DEFAULT '',
    received_at       TIMESTAMPTZ,
    receipt_path      TEXT NOT NULL DEFAULT '',
    http_status       INTEGER NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    UNIQUE (referral_id, destination, sha256)
);

CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_by_referral ON deliveries (referral_id, destination);

CREATE TABLE delivery_attempts (
    delivery_id  TEXT NOT NULL REFERENCES deliveries (id),
    attempt      INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ NOT NULL,
    outcome      TEXT NOT NULL,
    http_status  INTEGER NOT NULL DEFAULT 0,
    detail       TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
