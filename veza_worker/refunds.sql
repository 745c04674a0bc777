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

-- order_items --
-- An order's items and where each stands: in a succeeded refund, or in the one in flight.
SELECT i.id, i.seller_id, i.amount,
       EXISTS (SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id
                WHERE ri.order_item_id = i.id AND r.status = 'succeeded') AS refunded,
       EXISTS (SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id
                WHERE ri.order_item_id = i.id AND r.status = 'pending') AS in_flight
  FROM order_items i
 WHERE i.order_id = %(order_id)s
 ORDER BY i.id;

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

-- debit_sellers --
-- Each seller of the refund's items gives back those items' amount, clamped at zero (a seller
-- already paid out cannot go negative); the shortfall is returned so it can be logged for finance.
WITH owed AS (
    SELECT i.seller_id, sum(i.amount) AS amount
      FROM refund_items ri
      JOIN order_items i ON i.id = ri.order_item_id
     WHERE ri.refund_id = %(refund_id)s
     GROUP BY i.seller_id
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
-- Per seller of the refund's items, in one statement: an open transfer the refund takes whole is
-- reversed; one it takes part of keeps the seller's unrefunded amount, and a reversed piece
-- records the rest. A seller with no open transfer (already paid out) has nothing to reverse.
WITH owed AS (
    SELECT t.id AS transfer_id, t.amount AS transfer_amount, sum(i.amount) AS amount
      FROM refund_items ri
      JOIN order_items i ON i.id = ri.order_item_id
      JOIN seller_transfers t
        ON t.order_id = %(order_id)s AND t.seller_id = i.seller_id AND t.status <> 'reversed'
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

-- raise_refunded_amount --
-- The order's refunded total grows; it is refunded once no item is left, else completed again.
UPDATE orders o
   SET refunded_amount = o.refunded_amount + %(amount)s,
       status = CASE WHEN o.refunded_amount + %(amount)s >= o.total_amount THEN 'refunded' ELSE 'completed' END,
       updated_at = now()
 WHERE o.id = %(order_id)s
RETURNING status, refunded_amount;

-- insert_adopted_refund --
-- A refund made at the PSP (dashboard, API) that we never asked for: recorded under its own id.
-- Its status is the PSP's when it has no effect on the order; `pending` when settle applies it.
INSERT INTO refunds (id, order_id, invoice_id, requested_by, amount, currency, reason, note, status,
                     hyperswitch_refund_id, error_message, submitted_at, succeeded_at, failed_at)
VALUES (%(id)s, %(order_id)s, %(invoice_id)s, NULL, %(amount)s, %(currency)s, %(reason)s,
        'made at the payment provider', %(status)s, %(hyperswitch_refund_id)s, %(error_message)s, now(),
        CASE WHEN %(status)s = 'succeeded' THEN now() END, CASE WHEN %(status)s = 'failed' THEN now() END);
