-- Idempotency keys of amendments, with the version each one recorded.

CREATE TABLE amendments (
    request_id  TEXT PRIMARY KEY,
    sequence    BIGINT NOT NULL REFERENCES marks (sequence)
);
