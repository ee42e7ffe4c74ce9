-- Special educational needs provision and free school meals eligibility at the school, where
-- the MIS supplies them, for statistics by pupil group. Empty means not supplied.

ALTER TABLE enrolments ADD COLUMN sen_provision TEXT NOT NULL DEFAULT '';
ALTER TABLE enrolments ADD COLUMN free_school_meals TEXT NOT NULL DEFAULT '';
