-- The stage of the pupil's escalation ladder whose entry criteria their attendance meets, kept
-- to raise a trigger when it changes.

ALTER TABLE pupil_status ADD COLUMN ladder_stage TEXT NOT NULL DEFAULT '';
ALTER TABLE triggers ADD COLUMN ladder_stage TEXT NOT NULL DEFAULT '';
