-- The position of each feed the referrals service follows: the registers' UPN changes, under
-- 'registers.upn_changes', applied to referrals and packs in the transaction that stores it.

CREATE TABLE sync_state (
    feed    TEXT PRIMARY KEY,
    cursor  BIGINT NOT NULL
);
