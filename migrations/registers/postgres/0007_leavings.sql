-- Why and by whom each enrolment ended.

ALTER TABLE enrolments ADD COLUMN leaving_reason TEXT;
ALTER TABLE enrolments ADD COLUMN leaving_recorded_by TEXT;
