-- Whether the pupil missed the attendance target of an Attendance Improvement Plan whose review
-- date has passed.

ALTER TABLE pupil_status ADD COLUMN missed_target BOOLEAN NOT NULL DEFAULT FALSE;
