-- UPN changes read from the registers and applied here, in id order: MIS pupil ids, write-back
-- items and the MIS's deletions moved to the new UPN. The position is kept in sync_state under
-- 'registers.upn_changes'. A decision read from the change feed under a replaced UPN is queued
-- under the UPN that replaced it.

CREATE TABLE sync_state (
    feed    TEXT PRIMARY KEY,
    cursor  BIGINT NOT NULL
);

CREATE TABLE upn_changes (
    id          BIGINT PRIMARY KEY,
    from_upn    TEXT NOT NULL UNIQUE,
    to_upn      TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL
);
