-- A school's latest effective mark is read on every GetSchool, and the MIS sync API reads the
-- school on each batch of marks. Without this index that read scanned all of the school's
-- effective marks.
CREATE INDEX effective_marks_by_date ON effective_marks (laestab, session_date);
