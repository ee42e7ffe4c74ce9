-- UPN changes read from the registers and applied here, in id order. Their position is kept in
-- sync_state under 'registers.upn_changes'. A trigger that still names a replaced UPN acts on
-- the UPN that replaced it.

CREATE TABLE upn_changes (
    id          BIGINT PRIMARY KEY,
    from_upn    TEXT NOT NULL UNIQUE,
    to_upn      TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL
);
