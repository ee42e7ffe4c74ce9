-- Whether an enrolment is the pupil's only school, or the main or subsidiary school of a dual
-- registration.

ALTER TABLE enrolments ADD COLUMN registration TEXT NOT NULL DEFAULT 'sole';
