-- The W3C traceparent of the work that asked for each automatic letter, so that the letter
-- worker joins that work's trace. NULL when spans were not exported.

ALTER TABLE letter_jobs ADD COLUMN traceparent TEXT;
