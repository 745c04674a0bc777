-- outbox --
-- webhook_log_queued_idx: the cost is the queued rows'.
SELECT count(*), coalesce(extract(epoch FROM now() - min(received_at)), 0)::float8
  FROM hyperswitch_webhook_log
 WHERE processing_result = 'queued';

-- results_last_hour --
SELECT count(*) FILTER (WHERE processing_result = 'ok'),
       count(*) FILTER (WHERE processing_result LIKE 'skipped%%'),
       count(*) FILTER (WHERE processing_result LIKE 'error%%')
  FROM hyperswitch_webhook_log
 WHERE processed_at > now() - interval '1 hour';

-- stuck --
-- Rows each reconciler phase would take up now (its partial index), whatever the cool-down.
SELECT 'orders', count(*) FROM orders
 WHERE status = 'pending' AND payment_id IS NOT NULL
   AND coalesce(payment_created_at, created_at) < now() - %(orders)s
UNION ALL
SELECT 'refunds', count(*) FROM refunds
 WHERE status = 'pending' AND submitted_at IS NOT NULL AND order_id IS NOT NULL
   AND submitted_at < now() - %(refunds)s
UNION ALL
SELECT 'orphan_refunds', count(*) FROM refunds
 WHERE status = 'pending' AND submitted_at IS NULL AND NOT automatic AND created_at < now() - %(orphans)s
UNION ALL
SELECT 'invoice_refunds', count(*) FROM refunds
 WHERE status = 'pending' AND submitted_at IS NOT NULL AND invoice_id IS NOT NULL
   AND submitted_at < now() - %(refunds)s
UNION ALL
SELECT 'subscriptions', count(*) FROM subscription_invoices
 WHERE status = 'pending' AND created_at < now() - %(subscriptions)s
UNION ALL
SELECT 'payouts', count(*) FROM payouts
 WHERE status = 'pending' AND created_at < now() - %(payouts)s;

-- needs_a_human --
-- The oldest rows automation left to a person, each with what to look at: deliveries that ended
-- in error, and open discrepancies. Each case counts once: a reconciler row left to a person, or a
-- synthetic delivery (the PSP's own answer) that ended in error, is counted by its discrepancy.
(SELECT 'webhook_log' AS kind, id::text AS id, processing_result AS why, received_at AS since
   FROM hyperswitch_webhook_log
  WHERE processing_result LIKE 'error%%' AND user_agent IS DISTINCT FROM 'veza-worker-reconciler'
  ORDER BY received_at LIMIT 20)
UNION ALL
(SELECT 'discrepancy', id::text, kind || ': ' || detail, created_at
   FROM discrepancies WHERE resolved_at IS NULL
  ORDER BY created_at LIMIT 20)
ORDER BY since
LIMIT 20;

-- needs_a_human_count --
SELECT (SELECT count(*) FROM hyperswitch_webhook_log
          WHERE processing_result LIKE 'error%%' AND user_agent IS DISTINCT FROM 'veza-worker-reconciler')
     + (SELECT count(*) FROM discrepancies WHERE resolved_at IS NULL);

-- subscriptions_by_status --
SELECT status, count(*) FROM user_subscriptions GROUP BY status;

-- disputes_open --
SELECT count(*), min(challenge_required_by) FROM disputes WHERE closed_at IS NULL;
