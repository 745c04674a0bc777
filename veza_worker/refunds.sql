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
SELECT id, order_id, invoice_id, automatic FROM refunds WHERE hyperswitch_refund_id = %(hyperswitch_refund_id)s;

-- lock_refund --
-- The refund row, locked until the caller's transaction ends: a replay waits, then sees the result.
SELECT id, order_id, status, amount, currency, hyperswitch_refund_id, submitted_at, succeeded_at, requested_by
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

-- insert_refund_items --
INSERT INTO refund_items (refund_id, order_item_id)
SELECT %(refund_id)s, unnest(%(item_ids)s::uuid[]);

-- refund_item_count --
SELECT count(*) FROM refund_items WHERE refund_id = %(refund_id)s;

-- revoke_licenses --
-- The refund's items' licenses, and only theirs.
UPDATE licenses
   SET revoked_at = now()
 WHERE order_item_id IN (SELECT order_item_id FROM refund_items WHERE refund_id = %(refund_id)s)
   AND revoked_at IS NULL;

-- reverse_transfers --
-- Per seller of the refund's items, in one statement: an open transfer the refund takes whole is
-- reversed; one it takes part of keeps the seller's unrefunded amount, and a reversed piece
-- records the rest. A transfer a paid payout carried (`completed`) is never rewritten: the ledger
-- posts the seller's debt instead.
WITH owed AS (
    SELECT t.id AS transfer_id, t.amount AS transfer_amount, sum(i.amount) AS amount
      FROM refund_items ri
      JOIN order_items i ON i.id = ri.order_item_id
      JOIN seller_transfers t
        ON t.order_id = %(order_id)s AND t.seller_id = i.seller_id
       AND t.status NOT IN ('reversed', 'completed')
     WHERE ri.refund_id = %(refund_id)s
     GROUP BY t.id, t.amount
), reversed AS (
    UPDATE seller_transfers t
       SET status = 'reversed', updated_at = now()
      FROM owed
     WHERE t.id = owed.transfer_id AND owed.amount >= owed.transfer_amount
 RETURNING t.id
), kept AS (
    UPDATE seller_transfers t
       SET amount = t.amount - owed.amount, updated_at = now()
      FROM owed
     WHERE t.id = owed.transfer_id AND owed.amount < owed.transfer_amount
 RETURNING t.order_id, t.seller_id, t.currency, owed.amount
), pieces AS (
    INSERT INTO seller_transfers (order_id, seller_id, amount, currency, status)
    SELECT order_id, seller_id, amount, currency, 'reversed' FROM kept
 RETURNING 1
)
SELECT (SELECT count(*) FROM reversed) AS reversed, (SELECT count(*) FROM pieces) AS split;

-- insert_adopted_refund --
-- A refund made at the PSP (dashboard, API) that we never asked for, or a payment it cancelled
-- after capture: recorded under its own id, `pending` until settle applies the PSP's success, or
-- `failed` as the PSP says. Nothing when that id is recorded already (a replay).
INSERT INTO refunds (id, order_id, invoice_id, requested_by, amount, currency, reason, note, status,
                     hyperswitch_refund_id, error_message, submitted_at, succeeded_at, failed_at)
VALUES (%(id)s, %(order_id)s, %(invoice_id)s, NULL, %(amount)s, %(currency)s, %(reason)s,
        %(note)s, %(status)s, %(hyperswitch_refund_id)s, %(error_message)s, now(),
        CASE WHEN %(status)s = 'succeeded' THEN now() END, CASE WHEN %(status)s = 'failed' THEN now() END)
    ON CONFLICT (hyperswitch_refund_id) DO NOTHING
RETURNING id;

-- invoice_refunded --
-- What an invoice's refunds gave back (succeeded) and give or may give back (not failed).
SELECT coalesce(sum(amount) FILTER (WHERE status = 'succeeded'), 0),
       coalesce(sum(amount) FILTER (WHERE status <> 'failed'), 0)
  FROM refunds
 WHERE invoice_id = %(invoice_id)s;

-- invoice_money --
-- What the PSP captured for an invoice (its first automatic refund's amount when it has one: money
-- kept for nothing; else its amount when paid), what of it platform:suspense holds, and whether it
-- has an automatic refund.
SELECT coalesce(a.amount, CASE WHEN i.status = 'paid' THEN i.amount ELSE 0 END),
       coalesce((SELECT sum(e.amount)
                   FROM ledger_transactions t
                   JOIN ledger_entries e ON e.transaction_id = t.id
                  WHERE t.invoice_id = i.id AND e.account = 'platform:suspense'), 0),
       a.id IS NOT NULL
  FROM subscription_invoices i
  LEFT JOIN LATERAL (SELECT id, amount FROM refunds
                      WHERE invoice_id = i.id AND automatic AND retry_of IS NULL
                      ORDER BY created_at LIMIT 1) a ON true
 WHERE i.id = %(invoice_id)s;

-- failed_automatic_refunds_of_invoice --
SELECT id FROM refunds WHERE invoice_id = %(invoice_id)s AND automatic AND status = 'failed';

-- refund_item_ids --
SELECT order_item_id FROM refund_items WHERE refund_id = %(refund_id)s;

-- drop_refund_items --
-- A refund whose items the PSP's answer no longer vouches for (another amount, or refunded after
-- we failed it while its items were asked again): it keeps none.
DELETE FROM refund_items WHERE refund_id = %(refund_id)s;

-- set_refund_amount --
-- What the PSP really refunded.
UPDATE refunds SET amount = %(amount)s, updated_at = now() WHERE id = %(refund_id)s;
