-- insert_automatic_refund --
-- A refund nobody asked for (automatic, requested_by NULL): money we must not keep. An order or
-- an invoice is refunded automatically once, whatever replays: a failed one too stays the only one
-- (a person retries it, `retry-refund`); two at once meet on refunds_one_automatic_per_order /
-- _per_invoice.
INSERT INTO refunds (id, order_id, invoice_id, requested_by, amount, currency, reason, note, status,
                     hyperswitch_refund_id, automatic)
SELECT %(id)s::uuid, %(order_id)s::uuid, %(invoice_id)s::uuid, NULL, %(amount)s::bigint, %(currency)s::text,
       'requested_by_customer', %(note)s::text, 'pending', %(hyperswitch_refund_id)s::text, true
 WHERE NOT EXISTS (SELECT 1 FROM refunds
                    WHERE automatic AND (order_id = %(order_id)s::uuid OR invoice_id = %(invoice_id)s::uuid))
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

-- lock_failed --
-- A refund to retry, locked: two retries at once take turns. `first`: the automatic refund of its
-- order or invoice whose `kept` posting holds the money (itself, or the one it retries).
SELECT id, status, automatic, amount, currency, note, order_id, invoice_id, coalesce(retry_of, id) AS first
  FROM refunds
 WHERE id = %(refund_id)s
   FOR UPDATE;

-- insert_retry --
-- A new automatic refund beside a failed one; nothing when the order or invoice already has an
-- automatic refund pending or succeeded (refunds_one_automatic_per_order / _per_invoice).
INSERT INTO refunds (id, order_id, invoice_id, requested_by, amount, currency, reason, note, status,
                     hyperswitch_refund_id, automatic, retry_of)
VALUES (%(id)s, %(order_id)s, %(invoice_id)s, NULL, %(amount)s, %(currency)s, 'requested_by_customer',
        %(note)s, 'pending', %(hyperswitch_refund_id)s, true, %(retry_of)s)
    ON CONFLICT DO NOTHING
RETURNING id;

-- live_automatic_refund --
-- The automatic refund of an order or invoice that is pending or succeeded, if any.
SELECT id, status
  FROM refunds
 WHERE automatic AND status <> 'failed'
   AND (order_id = %(order_id)s OR invoice_id = %(invoice_id)s)
 LIMIT 1;
