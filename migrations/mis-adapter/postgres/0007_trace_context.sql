-- The W3C traceparent of the request that queued each delivery, so that the delivery worker
-- joins that request's trace. NULL when spans were not exported.

ALTER TABLE deliveries ADD COLUMN traceparent TEXT;
