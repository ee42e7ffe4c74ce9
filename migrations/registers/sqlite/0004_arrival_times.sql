-- When the pupil arrived, where the MIS recorded it.

ALTER TABLE marks ADD COLUMN arrived_at TEXT;
