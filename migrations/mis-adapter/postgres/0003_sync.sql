-- The MIS sync API: each MIS's own pupil ids mapped to UPNs, and every batch applied, under
-- its idempotency key, with the result returned to a replay.

CREATE TABLE pupil_ids (
    laestab        TEXT NOT NULL,
    mis_id         TEXT NOT NULL,
    upn            TEXT NOT NULL,
    first_seen_at  TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (laestab, mis_id)
);

CREATE INDEX pupil_ids_by_upn ON pupil_ids (laestab, upn);

CREATE TABLE sync_batches (
    laestab          TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    kind             TEXT NOT NULL,
    request_sha256   TEXT NOT NULL,
    response         BYTEA NOT NULL,
    source_name      TEXT NOT NULL,
    applied_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (laestab, idempotency_key)
);
