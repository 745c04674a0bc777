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
UPDATE orders
   SET status = 'completed',
       completed_at = now(),
       refund_deadline = now() + %(refund_window)s,
       updated_at = now()
 WHERE id = %(order_id)s;

-- grant_licenses --
-- One license per order item; the UNIQUE on order_item_id makes a second grant impossible.
INSERT INTO licenses (order_id, order_item_id, buyer_id, track_id)
SELECT i.order_id, i.id, o.buyer_id, i.track_id
  FROM order_items i
  JOIN orders o ON o.id = i.order_id
 WHERE i.order_id = %(order_id)s
    ON CONFLICT (order_item_id) DO NOTHING;

-- credit_sellers --
-- Each seller's balance grows by the sum of their items in this order. Rows are written (and so
-- locked) in (seller_id, currency) order, the one order every balance writer keeps: a completion
-- and a refund touching the same sellers never deadlock.
INSERT INTO seller_balances AS b (seller_id, currency, balance)
SELECT seller_id, %(currency)s, sum(amount)
  FROM order_items
 WHERE order_id = %(order_id)s
 GROUP BY seller_id
 ORDER BY seller_id
    ON CONFLICT (seller_id, currency)
    DO UPDATE SET balance = b.balance + excluded.balance, updated_at = now();

-- create_transfers --
-- One pending payout per seller of the order.
INSERT INTO seller_transfers (order_id, seller_id, amount, currency)
SELECT order_id, seller_id, sum(amount), %(currency)s
  FROM order_items
 WHERE order_id = %(order_id)s
 GROUP BY order_id, seller_id
    ON CONFLICT (order_id, seller_id) WHERE status <> 'reversed' DO NOTHING;

-- fail_order --
UPDATE orders
   SET status = 'failed', updated_at = now()
 WHERE id = %(order_id)s;

-- is_seller --
SELECT EXISTS (SELECT 1 FROM order_items WHERE order_id = %(order_id)s AND seller_id = %(user_id)s);
