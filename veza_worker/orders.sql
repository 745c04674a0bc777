-- lock_order --
-- The order, locked until the caller's transaction ends: every state change of an order holds it.
SELECT id, buyer_id, status, total_amount, currency, payment_id, completed_at, refund_deadline,
       hold_released_at
  FROM orders
 WHERE id = %(order_id)s
   FOR UPDATE;

-- lock_order_by_payment --
-- The order a payment webhook is about, locked: a replay waits, then sees the result.
SELECT id, buyer_id, status, total_amount, currency, payment_id, completed_at, refund_deadline,
       hold_released_at
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
-- order_item_id makes a second grant impossible), one pending transfer per seller; what each
-- seller earned comes back for the ledger's posting (ledger.post grows their balances).
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
    SELECT seller_id, sum(amount)::bigint AS amount
      FROM order_items
     WHERE order_id = %(order_id)s
     GROUP BY seller_id
), transferred AS (
    INSERT INTO seller_transfers (order_id, seller_id, amount, currency)
    SELECT %(order_id)s, seller_id, amount, %(currency)s
      FROM by_seller
        ON CONFLICT (order_id, seller_id) WHERE status <> 'reversed' DO NOTHING
 RETURNING 1
)
SELECT (SELECT count(*) FROM licensed) AS licenses,
       (SELECT count(*) FROM transferred) AS transfers,
       (SELECT coalesce(array_agg(seller_id ORDER BY seller_id), '{}') FROM by_seller) AS sellers,
       (SELECT coalesce(array_agg(amount ORDER BY seller_id), '{}') FROM by_seller) AS amounts;

-- fail_order --
UPDATE orders
   SET status = 'failed', updated_at = now()
 WHERE id = %(order_id)s;

-- is_seller --
SELECT EXISTS (SELECT 1 FROM order_items WHERE order_id = %(order_id)s AND seller_id = %(user_id)s);

-- items --
-- An order's items and where each stands: refunded (in a succeeded refund), in flight (in a
-- pending one), disputed (taken by a dispute that is open or lost), charged back (by a lost one).
SELECT i.id, i.seller_id, i.amount,
       EXISTS (SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id
                WHERE ri.order_item_id = i.id AND r.status = 'succeeded') AS refunded,
       EXISTS (SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id
                WHERE ri.order_item_id = i.id AND r.status = 'pending') AS in_flight,
       EXISTS (SELECT 1 FROM dispute_items di JOIN disputes d ON d.id = di.dispute_id
                WHERE di.order_item_id = i.id
                  AND d.status NOT IN ('dispute_won', 'dispute_cancelled')) AS disputed,
       EXISTS (SELECT 1 FROM dispute_items di JOIN disputes d ON d.id = di.dispute_id
                WHERE di.order_item_id = i.id
                  AND d.status IN ('dispute_lost', 'dispute_accepted', 'dispute_expired')) AS charged_back
  FROM order_items i
 WHERE i.order_id = %(order_id)s
 ORDER BY i.id;

-- follow_facts --
-- A paid order's status follows from what the PSP did to it: an open dispute, else a refund in
-- flight, else no item left (charged back if a lost dispute took some, else refunded), else
-- completed. refunded_amount is what its refunded items cost.
WITH facts AS (
    SELECT EXISTS (SELECT 1 FROM disputes d
                    WHERE d.order_id = o.id AND d.closed_at IS NULL AND d.status <> 'none') AS disputed,
           EXISTS (SELECT 1 FROM refunds r
                    WHERE r.order_id = o.id AND r.status = 'pending' AND NOT r.automatic) AS refunding,
           coalesce(sum(i.amount) FILTER (WHERE it.refunded), 0) AS refunded,
           bool_and(it.refunded OR it.charged_back) AS none_left,
           bool_or(it.charged_back) AS charged_back
      FROM orders o
      JOIN order_items i ON i.order_id = o.id
      CROSS JOIN LATERAL (
          SELECT EXISTS (SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id
                          WHERE ri.order_item_id = i.id AND r.status = 'succeeded') AS refunded,
                 EXISTS (SELECT 1 FROM dispute_items di JOIN disputes d ON d.id = di.dispute_id
                          WHERE di.order_item_id = i.id
                            AND d.status IN ('dispute_lost', 'dispute_accepted', 'dispute_expired')) AS charged_back
      ) it
     WHERE o.id = %(order_id)s
     GROUP BY o.id
)
UPDATE orders o
   SET status = CASE WHEN facts.disputed THEN 'disputed'
                     WHEN facts.refunding THEN 'refund_pending'
                     WHEN facts.none_left AND facts.charged_back THEN 'charged_back'
                     WHEN facts.none_left THEN 'refunded'
                     ELSE 'completed' END,
       refunded_amount = least(facts.refunded, o.total_amount),
       updated_at = now()
  FROM facts
 WHERE o.id = %(order_id)s
RETURNING o.status, o.refunded_amount;
