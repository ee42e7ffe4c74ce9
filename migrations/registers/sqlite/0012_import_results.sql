-- The result of each partial import, encoded as an ImportRegisterResponse, so that a replay
-- of the same request returns it.

ALTER TABLE imports ADD COLUMN results BLOB;
