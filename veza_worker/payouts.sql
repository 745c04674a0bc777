-- due_holds --
-- Orders whose earnings may leave `held`: the refund window has passed, no dispute is open on
-- them and no refund is in flight (orders_hold_due_idx: the cost is the orders due). Keyset
-- pagination on (refund_deadline, id): a page locked by another sweep is not read again.
SELECT o.id, o.refund_deadline
  FROM orders o
 WHERE o.hold_released_at IS NULL
   AND o.status IN ('completed', 'refunded', 'charged_back')
   AND o.refund_deadline < now()
   AND (o.refund_deadline, o.id) > (%(after_deadline)s::timestamptz, %(after_id)s::uuid)
 ORDER BY o.refund_deadline, o.id
 LIMIT %(limit)s;

-- lock_due_hold --
-- One order to release, locked as every writer of an order locks it first, its conditions checked
-- again under the lock. SKIP LOCKED: an order a refund or a dispute is busy with waits a sweep.
SELECT o.id, o.currency
  FROM orders o
 WHERE o.id = %(order_id)s
   AND o.hold_released_at IS NULL
   AND o.status IN ('completed', 'refunded', 'charged_back')
   AND o.refund_deadline < now()
   AND NOT EXISTS (SELECT 1 FROM disputes d WHERE d.order_id = o.id AND d.closed_at IS NULL)
   AND NOT EXISTS (SELECT 1 FROM refunds r
                    WHERE r.order_id = o.id AND r.status = 'pending' AND NOT r.automatic)
   FOR UPDATE OF o SKIP LOCKED;

-- no_commit_wait --
-- For this transaction only: its commit does not wait for the WAL flush. Only for writes a crash
-- may lose safely: the next sweep or the reconciler redoes them (a posting's key makes it once).
SET LOCAL synchronous_commit = off;

-- mark_hold_released --
UPDATE orders SET hold_released_at = now(), updated_at = now() WHERE id = %(order_id)s;

-- payable --
-- Every (seller, currency) with enough available, and what keeps it from a payout now: no payout
-- method, a hold, a payout in flight. One scan of the balances serves the payouts and the counts
-- of sellers left unpaid. Keyset pagination on (seller_id, currency); each pair is claimed again
-- under its lock.
SELECT b.seller_id, b.currency, m.seller_id IS NULL AS no_method,
       EXISTS (SELECT 1 FROM seller_payout_holds h
                WHERE h.seller_id = b.seller_id AND h.released_at IS NULL) AS held,
       EXISTS (SELECT 1 FROM payouts p
                WHERE p.seller_id = b.seller_id AND p.currency = b.currency AND p.status = 'pending') AS in_flight
  FROM seller_balances b
  LEFT JOIN seller_payout_methods m ON m.seller_id = b.seller_id
 WHERE b.available >= %(minimum)s
   AND (b.seller_id, b.currency) > (%(after_seller)s::uuid, %(after_currency)s::text)
 ORDER BY b.seller_id, b.currency
 LIMIT %(limit)s;

-- claim_seller --
-- The seller's balance row locked (SKIP LOCKED: a second sweep, or a posting in progress, moves
-- on) with the latest committed `available`, every condition checked again: two sweeps at once
-- never both pay. The unique payouts_one_pending is the last word.
SELECT b.available AS amount, m.customer_id, m.payout_method_id, m.payout_type
  FROM seller_balances b
  JOIN seller_payout_methods m ON m.seller_id = b.seller_id
 WHERE b.seller_id = %(seller_id)s
   AND b.currency = %(currency)s
   AND b.available >= %(minimum)s
   AND NOT EXISTS (SELECT 1 FROM payouts p
                    WHERE p.seller_id = b.seller_id AND p.currency = b.currency AND p.status = 'pending')
   AND NOT EXISTS (SELECT 1 FROM seller_payout_holds h
                    WHERE h.seller_id = b.seller_id AND h.released_at IS NULL)
   FOR UPDATE OF b SKIP LOCKED;

-- insert_payout --
INSERT INTO payouts (id, seller_id, amount, currency, merchant_reference, customer_id, payout_method_id,
                     payout_type)
VALUES (%(id)s, %(seller_id)s, %(amount)s, %(currency)s, %(merchant_reference)s, %(customer_id)s,
        %(payout_method_id)s, %(payout_type)s)
RETURNING id, seller_id, amount, currency, status, hyperswitch_payout_id, merchant_reference, customer_id,
          payout_method_id, payout_type, submitted_at;

-- carry_transfers --
-- The transfers the new payout carries: the seller's in that currency whose order's hold was
-- released and that no payout carries yet.
UPDATE seller_transfers t
   SET payout_id = %(payout_id)s, updated_at = now()
  FROM orders o
 WHERE o.id = t.order_id
   AND t.seller_id = %(seller_id)s
   AND t.currency = %(currency)s
   AND t.status = 'pending'
   AND t.payout_id IS NULL
   AND o.hold_released_at IS NOT NULL;

-- lock_payout --
SELECT id, seller_id, amount, currency, status, hyperswitch_payout_id, merchant_reference, customer_id,
       payout_method_id, payout_type, submitted_at
  FROM payouts
 WHERE id = %(id)s
   FOR UPDATE;

-- lock_payout_at_psp --
-- The payout a PSP object is about: by the PSP's payout_id, else by our merchant_order_reference_id
-- (a webhook that beat the create's answer, or an ambiguous create found by the reconciler).
SELECT id, seller_id, amount, currency, status, hyperswitch_payout_id, merchant_reference, customer_id,
       payout_method_id, payout_type, submitted_at
  FROM payouts
 WHERE hyperswitch_payout_id = %(psp_id)s OR merchant_reference = %(reference)s
 ORDER BY hyperswitch_payout_id = %(psp_id)s DESC NULLS LAST
 LIMIT 1
   FOR UPDATE;

-- adopt_psp_id --
-- The PSP holds the payout: its id, and from now on it counts as submitted.
UPDATE payouts
   SET hyperswitch_payout_id = %(psp_id)s, submitted_at = coalesce(submitted_at, now()), updated_at = now()
 WHERE id = %(id)s;

-- record_psp_status --
UPDATE payouts SET psp_status = %(psp_status)s, updated_at = now() WHERE id = %(id)s;

-- mark_paid --
UPDATE payouts SET status = 'paid', paid_at = now(), updated_at = now() WHERE id = %(id)s;

-- mark_failed --
UPDATE payouts
   SET status = 'failed', failed_at = now(), error_message = %(error_message)s, updated_at = now()
 WHERE id = %(id)s;

-- mark_reversed --
UPDATE payouts
   SET status = 'reversed', reversed_at = now(), error_message = %(error_message)s, updated_at = now()
 WHERE id = %(id)s;

-- complete_transfers --
-- A paid payout's transfers are completed (a transfer a dispute put on hold meanwhile stays so).
UPDATE seller_transfers
   SET status = 'completed', updated_at = now()
 WHERE payout_id = %(payout_id)s
   AND status = 'pending';

-- free_transfers --
-- The payout did not pay them (failed, or the bank returned it): no payout carries them, and
-- the ones it had completed are pending again, for the next payout to carry.
UPDATE seller_transfers
   SET payout_id = NULL,
       status = CASE WHEN status = 'completed' THEN 'pending' ELSE status END,
       updated_at = now()
 WHERE payout_id = %(payout_id)s;

-- list_payouts --
-- `veza-worker payouts`, newest first (payouts_seller_idx, payouts_created_idx).
SELECT id AS payout_id, seller_id, amount, currency, status, hyperswitch_payout_id, merchant_reference,
       psp_status, error_message, created_at, submitted_at, paid_at, failed_at, reversed_at
  FROM payouts
 WHERE (%(seller_id)s::uuid IS NULL OR seller_id = %(seller_id)s)
   AND (%(status)s::text IS NULL OR status = %(status)s)
 ORDER BY created_at DESC, id
 LIMIT %(limit)s;

-- open_hold --
INSERT INTO seller_payout_holds (seller_id, reason)
VALUES (%(seller_id)s, %(reason)s)
    ON CONFLICT (seller_id) WHERE released_at IS NULL DO NOTHING
RETURNING seller_id, reason, held_at;

-- find_hold --
SELECT seller_id, reason, held_at FROM seller_payout_holds WHERE seller_id = %(seller_id)s AND released_at IS NULL;

-- close_hold --
UPDATE seller_payout_holds
   SET released_at = now()
 WHERE seller_id = %(seller_id)s
   AND released_at IS NULL
RETURNING seller_id, reason, held_at, released_at;

-- held_sellers --
SELECT seller_id FROM seller_payout_holds WHERE released_at IS NULL ORDER BY held_at, seller_id;

-- in_transit --
-- Money in payouts not final yet, by currency, and how long the oldest has been on its way
-- (payouts_pending_idx: the cost is the pending payouts).
SELECT currency, sum(amount)::bigint, extract(epoch FROM now() - min(created_at))::float8
  FROM payouts
 WHERE status = 'pending'
 GROUP BY currency
 ORDER BY currency;

-- failed_last_day --
-- Payouts that failed, or that the bank returned, in the last day.
SELECT (SELECT count(*) FROM payouts WHERE failed_at > now() - interval '1 day')
     + (SELECT count(*) FROM payouts WHERE reversed_at > now() - interval '1 day');

-- last_blocked --
-- What the last pay_sellers sweep counted as not payable for want of a payout method.
SELECT (counts ->> 'no_payout_method')::bigint
  FROM sweep_runs
 WHERE name = 'pay_sellers' AND finished_at IS NOT NULL AND counts ? 'no_payout_method'
 ORDER BY started_at DESC
 LIMIT 1;
