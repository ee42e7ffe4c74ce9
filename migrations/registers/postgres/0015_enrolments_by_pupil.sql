-- An import with pupils looks up each pupil's open enrolments at the trust's other schools,
-- to follow moves. Without this index that lookup read every enrolment of the trust.
CREATE INDEX enrolments_by_pupil ON enrolments (upn);
