-- The W3C traceparent of the evaluation that recorded each trigger, sent with the trigger on
-- WatchTriggers so that the cases service joins that evaluation's trace. NULL when spans were
-- not exported.

ALTER TABLE triggers ADD COLUMN traceparent TEXT;
