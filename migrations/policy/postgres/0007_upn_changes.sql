-- UPN changes read from the registers and applied here, in id order. Their position is kept in
-- sync_state under 'registers.upn_changes'. A mark read from the change feed under a replaced
-- UPN is kept under the UPN that replaced it.

CREATE TABLE upn_changes (
    id          BIGINT PRIMARY KEY,
    from_upn    TEXT NOT NULL UNIQUE,
    to_upn      TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL
);
