-- insert_automatic_refund --
-- A refund nobody asked for (automatic, requested_by NULL): money we must not keep. An order or
-- an invoice is refunded automatically once, whatever replays.
INSERT INTO refunds (id, order_id, invoice_id, requested_by, amount, currency, reason, note, status,
                     hyperswitch_refund_id, automatic)
VALUES (%(id)s, %(order_id)s, %(invoice_id)s, NULL, %(amount)s, %(currency)s, 'requested_by_customer',
        %(note)s, 'pending', %(hyperswitch_refund_id)s, true)
    ON CONFLICT DO NOTHING
RETURNING id;

-- committed_unsent --
-- Which of these refunds exist and wait to be sent: run after the opening transaction ended, it
-- sees only what that transaction committed.
SELECT id
  FROM refunds
 WHERE id = ANY(%(ids)s::uuid[])
   AND status = 'pending' AND submitted_at IS NULL AND automatic;

-- unsent_automatic_refunds --
-- The refund outbox: automatic refunds not yet sent, oldest first (refunds_unsent_automatic_idx).
SELECT id
  FROM refunds
 WHERE status = 'pending' AND submitted_at IS NULL AND automatic
 ORDER BY created_at
 LIMIT %(limit)s;

-- lock_unsent_refund --
-- One automatic refund to send, with the payment it refunds; skipped when another sender holds it.
SELECT r.id, r.hyperswitch_refund_id, r.amount, r.reason, r.note,
       coalesce(o.payment_id, i.payment_id) AS payment_id, r.order_id, r.invoice_id
  FROM refunds r
  LEFT JOIN orders o ON o.id = r.order_id
  LEFT JOIN subscription_invoices i ON i.id = r.invoice_id
 WHERE r.id = %(refund_id)s
   AND r.status = 'pending' AND r.submitted_at IS NULL AND r.automatic
   FOR UPDATE OF r SKIP LOCKED;

-- mark_submitted --
-- The PSP holds the refund; only its webhook or the reconciler makes it terminal.
UPDATE refunds
   SET submitted_at = coalesce(submitted_at, now()), updated_at = now()
 WHERE id = %(refund_id)s;

-- lock_refund --
-- Locked until the caller's transaction ends: a replayed refund event waits, then sees the result.
SELECT id, status, hyperswitch_refund_id, amount, currency, order_id, invoice_id
  FROM refunds
 WHERE id = %(refund_id)s
   FOR UPDATE;

-- succeed_refund --
UPDATE refunds
   SET status = 'succeeded', succeeded_at = now(), updated_at = now()
 WHERE id = %(refund_id)s;

-- fail_refund --
UPDATE refunds
   SET status = 'failed', failed_at = now(), error_message = %(error_message)s, updated_at = now()
 WHERE id = %(refund_id)s;
