-- The W3C traceparent of the work that asked for each automatic letter and each message, so
-- that the letter worker and the outbox join that work's trace. NULL when spans were not
-- exported.

ALTER TABLE letter_jobs ADD COLUMN traceparent TEXT;
ALTER TABLE messages ADD COLUMN traceparent TEXT;
