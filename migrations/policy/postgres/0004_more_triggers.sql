-- Where each pupil stands on the rules added since: an unexplained absence left unresolved,
-- a run of unauthorised absence to report, and long sickness to report.

ALTER TABLE pupil_status ADD COLUMN unexplained_overdue BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE pupil_status ADD COLUMN unauthorised_return BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE pupil_status ADD COLUMN sickness_return BOOLEAN NOT NULL DEFAULT FALSE;
