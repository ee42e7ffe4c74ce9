-- The W3C traceparent of the request that stored each mark version, sent with the version on
-- the change feed so that the services following the feed join that request's trace. NULL
-- when spans were not exported.

ALTER TABLE marks ADD COLUMN traceparent TEXT;
