-- Retention walks only the rows it may delete: rows kept for a human (queued, error…) pile up at
-- the old end of a plain received_at index, and every batch would step over them again.
CREATE INDEX webhook_log_expirable_idx ON hyperswitch_webhook_log (received_at)
    WHERE processing_result <> 'queued' AND processing_result NOT LIKE 'error%';
DROP INDEX webhook_log_received_idx;
