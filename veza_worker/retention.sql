-- delete_expired --
-- One retention batch. Rows still queued or ended in error wait for a human and are never deleted.
DELETE FROM hyperswitch_webhook_log
 WHERE id = ANY(ARRAY(
           SELECT id
             FROM hyperswitch_webhook_log
            WHERE received_at < now() - %(older_than)s
              AND processing_result <> 'queued'
              AND processing_result NOT LIKE 'error%%'
            ORDER BY received_at
            LIMIT %(limit)s
              FOR UPDATE SKIP LOCKED));
