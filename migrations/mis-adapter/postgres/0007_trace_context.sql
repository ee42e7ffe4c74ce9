-- The W3C traceparent of the request that queued each delivery, and of the request that stored
-- each decision to write back, so that the delivery and write-back workers join that request's
-- trace. NULL when spans were not exported.

ALTER TABLE deliveries ADD COLUMN traceparent TEXT;
ALTER TABLE writeback_items ADD COLUMN traceparent TEXT;
