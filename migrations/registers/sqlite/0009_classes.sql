-- The pupil's class or registration group at the school, where the MIS supplies it.

ALTER TABLE enrolments ADD COLUMN class_name TEXT NOT NULL DEFAULT '';
