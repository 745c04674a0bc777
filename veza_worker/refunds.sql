-- insert_refund --
-- Phase 1: the refund row, with the PSP id derived from its own uuid, before any PSP call.
INSERT INTO refunds (id, order_id, requested_by, amount, currency, reason, note, status, hyperswitch_refund_id)
VALUES (%(id)s, %(order_id)s, %(requested_by)s, %(amount)s, %(currency)s, %(reason)s, %(note)s, 'pending',
        %(hyperswitch_refund_id)s);

-- set_order_status --
UPDATE orders
   SET status = %(status)s, updated_at = now()
 WHERE id = %(order_id)s;

-- mark_submitted --
-- Phase 2 went through: the PSP holds the refund. Status is untouched: only a webhook or the
-- reconciler makes it terminal (a webhook may already have).
UPDATE refunds
   SET submitted_at = coalesce(submitted_at, now()), updated_at = now()
 WHERE id = %(refund_id)s;

-- refund_status --
SELECT status FROM refunds WHERE id = %(refund_id)s;

-- find_order_of_refund --
-- Unlocked: the caller locks the order first, then the refund, the order every writer takes.
SELECT id, order_id, automatic FROM refunds WHERE hyperswitch_refund_id = %(hyperswitch_refund_id)s;

-- lock_refund --
-- The refund row, locked until the caller's transaction ends: a replay waits, then sees the result.
SELECT id, order_id, status, amount, currency, hyperswitch_refund_id, submitted_at, succeeded_at
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

-- revoke_licenses --
UPDATE licenses
   SET revoked_at = now()
 WHERE order_id = %(order_id)s
   AND revoked_at IS NULL;

-- debit_sellers --
-- Each seller gives back their items' amount, clamped at zero (a seller already paid out cannot go
-- negative); the shortfall is returned so it can be logged for finance to recover.
WITH owed AS (
    SELECT seller_id, sum(amount) AS amount
      FROM order_items
     WHERE order_id = %(order_id)s
     GROUP BY seller_id
), before AS (
    -- Locked in (seller_id, currency) order, the one order every balance writer keeps.
    SELECT b.seller_id, b.balance, owed.amount
      FROM seller_balances b
      JOIN owed ON owed.seller_id = b.seller_id
     WHERE b.currency = %(currency)s
     ORDER BY b.seller_id
       FOR UPDATE OF b
)
UPDATE seller_balances b
   SET balance = greatest(before.balance - before.amount, 0), updated_at = now()
  FROM before
 WHERE b.seller_id = before.seller_id
   AND b.currency = %(currency)s
RETURNING b.seller_id, greatest(before.amount - before.balance, 0) AS shortfall;

-- reverse_transfers --
UPDATE seller_transfers
   SET status = 'reversed', updated_at = now()
 WHERE order_id = %(order_id)s
   AND status <> 'reversed';

-- insert_automatic_refund --
-- A refund nobody asked for (automatic, requested_by NULL): money we must not keep. An order or
-- an invoice is refunded automatically once, whatever replays.
INSERT INTO refunds (id, order_id, invoice_id, requested_by, amount, currency, reason, note, status,
                     hyperswitch_refund_id, automatic)
VALUES (%(id)s, %(order_id)s, %(invoice_id)s, NULL, %(amount)s, %(currency)s, 'requested_by_customer',
        %(note)s, 'pending', %(hyperswitch_refund_id)s, true)
    ON CONFLICT DO NOTHING
RETURNING id;

-- unsent_automatic_refunds --
-- The refund outbox: automatic refunds not yet sent, oldest first (refunds_unsent_automatic_idx).
SELECT id
  FROM refunds
 WHERE status = 'pending' AND submitted_at IS NULL AND automatic
 ORDER BY created_at
 LIMIT %(limit)s;

-- lock_unsent_refund --
-- One automatic refund to send, with the payment it refunds; skipped when another sweep holds it.
SELECT r.id, r.hyperswitch_refund_id, r.amount, r.reason, r.note,
       coalesce(o.payment_id, i.payment_id) AS payment_id, r.order_id, r.invoice_id
  FROM refunds r
  LEFT JOIN orders o ON o.id = r.order_id
  LEFT JOIN subscription_invoices i ON i.id = r.invoice_id
 WHERE r.id = %(refund_id)s
   AND r.status = 'pending' AND r.submitted_at IS NULL
   FOR UPDATE OF r SKIP LOCKED;
