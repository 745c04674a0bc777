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

-- prune_reconcile_state --
-- What the reconciler remembers about rows that are no longer open (a webhook settled them after
-- a check): nothing to remember. Rows it gave up on stay for a human.
DELETE FROM reconcile_state s
 WHERE s.gave_up_at IS NULL
   AND CASE s.kind
       WHEN 'order' THEN NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = s.row_id AND o.status = 'pending')
       WHEN 'refund' THEN NOT EXISTS (SELECT 1 FROM refunds r WHERE r.id = s.row_id AND r.status = 'pending')
       ELSE NOT EXISTS (SELECT 1 FROM subscription_invoices i WHERE i.id = s.row_id AND i.status = 'pending')
       END;
