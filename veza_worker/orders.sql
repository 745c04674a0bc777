-- lock_order --
-- The order, locked until the caller's transaction ends: every state change of an order holds it.
SELECT id, buyer_id, status, total_amount, currency, payment_id, completed_at, refund_deadline
  FROM orders
 WHERE id = %(order_id)s
   FOR UPDATE;

-- lock_order_by_payment --
-- The order a payment webhook is about, locked: a replay waits, then sees the result.
SELECT id, buyer_id, status, total_amount, currency, payment_id, completed_at, refund_deadline
  FROM orders
 WHERE payment_id = %(payment_id)s
   FOR UPDATE;

-- set_payment_id --
-- Stored before the PSP call, so a webhook or a retry always finds the order; the reconciler
-- counts "stuck" from payment_created_at, not from the order's creation.
UPDATE orders
   SET payment_id = %(payment_id)s, payment_created_at = now(), updated_at = now()
 WHERE id = %(order_id)s;

-- complete_order --
-- A paid order, in one statement: the order completed, one license per item (the UNIQUE on
-- order_item_id makes a second grant impossible), one pending payout per seller, and each
-- seller's balance grown by the sum of their items. The balances are the hot rows (every sale
-- of a popular seller touches theirs): in one statement they are locked only for its end, the
-- delivery's final UPDATE and the commit (Postgres runs the CTEs in an order of its own; the
-- final SELECT reads `credited` last). They are written in (seller_id, currency) order, the one
-- order every balance writer keeps, so a completion and a refund never deadlock.
WITH completed AS (
    UPDATE orders
       SET status = 'completed',
           completed_at = now(),
           refund_deadline = now() + %(refund_window)s,
           updated_at = now()
     WHERE id = %(order_id)s
 RETURNING id, buyer_id
), licensed AS (
    INSERT INTO licenses (order_id, order_item_id, buyer_id, track_id)
    SELECT i.order_id, i.id, c.buyer_id, i.track_id
      FROM order_items i
      JOIN completed c ON c.id = i.order_id
        ON CONFLICT (order_item_id) DO NOTHING
 RETURNING 1
), by_seller AS (
    SELECT seller_id, sum(amount) AS amount
      FROM order_items
     WHERE order_id = %(order_id)s
     GROUP BY seller_id
), transferred AS (
    INSERT INTO seller_transfers (order_id, seller_id, amount, currency)
    SELECT %(order_id)s, seller_id, amount, %(currency)s
      FROM by_seller
        ON CONFLICT (order_id, seller_id) WHERE status <> 'reversed' DO NOTHING
 RETURNING 1
), credited AS (
    INSERT INTO seller_balances AS b (seller_id, currency, balance)
    SELECT seller_id, %(currency)s, amount
      FROM by_seller
     ORDER BY seller_id
        ON CONFLICT (seller_id, currency)
        DO UPDATE SET balance = b.balance + excluded.balance, updated_at = now()
 RETURNING 1
)
SELECT (SELECT count(*) FROM licensed) AS licenses,
       (SELECT count(*) FROM transferred) AS transfers,
       (SELECT count(*) FROM credited) AS sellers;

-- fail_order --
UPDATE orders
   SET status = 'failed', updated_at = now()
 WHERE id = %(order_id)s;

-- is_seller --
SELECT EXISTS (SELECT 1 FROM order_items WHERE order_id = %(order_id)s AND seller_id = %(user_id)s);
