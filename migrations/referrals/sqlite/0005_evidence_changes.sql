-- Marks that changed after a referral was submitted. The registers' feed position of the
-- newest mark in the submitted pack, and the pack's attendance period, are kept with the
-- referral; a later effective version of a mark in that period is evidence the local
-- authority has not seen. Referrals submitted before this migration have no position and
-- are not followed.

ALTER TABLE referrals ADD COLUMN evidence_sequence INTEGER;
ALTER TABLE referrals ADD COLUMN period_from TEXT;
ALTER TABLE referrals ADD COLUMN period_to TEXT;

CREATE TABLE evidence_changes (
    referral_id   TEXT NOT NULL REFERENCES referrals (id),
    sequence      INTEGER NOT NULL,
    session_date  TEXT NOT NULL,
    session       TEXT NOT NULL,
    code          TEXT NOT NULL,
    noticed_at    TEXT NOT NULL,
    PRIMARY KEY (referral_id, sequence)
);

CREATE INDEX referrals_followed ON referrals (laestab, upn) WHERE evidence_sequence IS NOT NULL;
