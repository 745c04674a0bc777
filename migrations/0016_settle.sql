-- The books match the PSP's (DESIGN.md, Round 3): the reconciler's "needs a human" cases become
-- discrepancies, which `status` and veza_needs_human count instead of reconcile_state rows and the
-- synthetic deliveries' error rows (one case, counted once). The cases already waiting are opened
-- here, so nothing a person was to look at vanishes from the count.

-- Rows the reconciler gave up on after our own code raised on them 3 times, and rows still not
-- final at the PSP after 5 answers.
INSERT INTO discrepancies (kind, order_id, invoice_id, refund_id, payout_id, subject, detail, created_at)
SELECT CASE WHEN gave_up_at IS NOT NULL THEN 'reconcile_gave_up' ELSE 'reconcile_still_pending' END,
       CASE WHEN kind = 'order' THEN row_id END,
       CASE WHEN kind = 'invoice' THEN row_id END,
       CASE WHEN kind = 'refund' THEN row_id END,
       CASE WHEN kind = 'payout' THEN row_id END,
       CASE WHEN kind IN ('order', 'invoice', 'refund', 'payout') THEN '' ELSE kind || ':' || row_id END,
       CASE WHEN gave_up_at IS NOT NULL
            THEN 'the reconciler raised ' || failures || ' times on ' || kind || ' ' || row_id
                 || ' and no longer retries it (before the upgrade; the worker log has the traceback)'
            ELSE kind || ' ' || row_id || ' is still ' || coalesce(last_psp_status, '?')
                 || ' at the payment provider after ' || checks || ' checks' END,
       coalesce(gave_up_at, first_checked_at)
  FROM reconcile_state
 WHERE (gave_up_at IS NOT NULL AND failures >= 3) OR (gave_up_at IS NULL AND checks >= 5)
    ON CONFLICT DO NOTHING;

-- The PSP's own answers (synthetic deliveries) that ended in error: the reconciler gave up on
-- their rows; one discrepancy per PSP object, named by its id.
INSERT INTO discrepancies (kind, subject, detail, created_at)
SELECT DISTINCT ON (psp_id) 'synthetic_delivery_failed', psp_id,
       'the payment provider''s ' || coalesce(event_type, '?') || ' for ' || psp_id || ' (log_id ' || id
       || ') could not be applied: ' || processing_result,
       received_at
  FROM (SELECT id, event_type, processing_result, received_at,
               coalesce(payload::jsonb #>> '{content,object,refund_id}',
                        payload::jsonb #>> '{content,object,payout_id}',
                        payload::jsonb #>> '{content,object,dispute_id}',
                        payload::jsonb #>> '{content,object,payment_id}', '') AS psp_id
          FROM hyperswitch_webhook_log
         WHERE processing_result LIKE 'error%'
           AND user_agent = 'veza-worker-reconciler') AS failed
 ORDER BY psp_id, received_at
    ON CONFLICT DO NOTHING;
