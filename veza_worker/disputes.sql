-- record_dispute --
-- The first we hear of a dispute; a racer that recorded it first wins (the caller then locks it).
INSERT INTO disputes (id, payment_id, order_id, invoice_id, amount, currency, stage, status, reason,
                      challenge_required_by)
VALUES (%(id)s, %(payment_id)s, %(order_id)s, %(invoice_id)s, %(amount)s, %(currency)s, %(stage)s,
        'none', %(reason)s, %(challenge_required_by)s)
    ON CONFLICT (id) DO NOTHING;

-- lock_dispute --
SELECT id, payment_id, order_id, invoice_id, amount, currency, stage, status, held, closed_at
  FROM disputes
 WHERE id = %(id)s
   FOR UPDATE;

-- move_dispute --
-- A higher-ranked status: what the PSP says now; closed when final.
UPDATE disputes
   SET status = %(status)s, stage = %(stage)s, amount = %(amount)s, reason = coalesce(%(reason)s, reason),
       challenge_required_by = coalesce(%(challenge_required_by)s, challenge_required_by),
       held = %(held)s,
       closed_at = CASE WHEN %(final)s THEN now() END,
       updated_at = now()
 WHERE id = %(id)s;

-- hold_transfers --
UPDATE seller_transfers
   SET status = 'on_hold', updated_at = now()
 WHERE order_id = %(order_id)s
   AND status = 'pending';

-- release_transfers --
UPDATE seller_transfers
   SET status = 'pending', updated_at = now()
 WHERE order_id = %(order_id)s
   AND status = 'on_hold';

-- reverse_open_transfers --
UPDATE seller_transfers
   SET status = 'reversed', updated_at = now()
 WHERE order_id = %(order_id)s
   AND status <> 'reversed';

-- debit_for_dispute --
-- Each seller gives back their unrefunded items' amount, clamped at zero, locked in seller_id
-- order (the one order every balance writer keeps); what was really taken is recorded.
WITH owed AS (
    SELECT i.seller_id, sum(i.amount) AS amount
      FROM order_items i
     WHERE i.order_id = %(order_id)s
       AND NOT EXISTS (SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id
                        WHERE ri.order_item_id = i.id AND r.status = 'succeeded')
     GROUP BY i.seller_id
), before AS (
    SELECT b.seller_id, b.balance, owed.amount
      FROM seller_balances b
      JOIN owed ON owed.seller_id = b.seller_id
     WHERE b.currency = %(currency)s
     ORDER BY b.seller_id
       FOR UPDATE OF b
), debited AS (
    UPDATE seller_balances b
       SET balance = b.balance - least(before.balance, before.amount), updated_at = now()
      FROM before
     WHERE b.seller_id = before.seller_id
       AND b.currency = %(currency)s
 RETURNING b.seller_id, least(before.balance, before.amount) AS taken, before.amount AS owed
)
INSERT INTO dispute_debits (dispute_id, seller_id, currency, amount)
SELECT %(dispute_id)s, seller_id, %(currency)s, taken FROM debited
RETURNING seller_id, amount, (SELECT owed FROM debited d WHERE d.seller_id = dispute_debits.seller_id);

-- recredit_for_dispute --
-- A won dispute gives each seller back exactly what its opening took, in seller_id order.
WITH given AS (
    SELECT seller_id, currency, amount FROM dispute_debits WHERE dispute_id = %(dispute_id)s
), locked AS (
    SELECT b.seller_id FROM seller_balances b
      JOIN given g ON g.seller_id = b.seller_id AND g.currency = b.currency
     ORDER BY b.seller_id
       FOR UPDATE OF b
)
UPDATE seller_balances b
   SET balance = b.balance + g.amount, updated_at = now()
  FROM given g
 WHERE b.seller_id = g.seller_id AND b.currency = g.currency
   AND b.seller_id IN (SELECT seller_id FROM locked)
RETURNING b.seller_id, g.amount;

-- revoke_order_licenses --
UPDATE licenses
   SET revoked_at = now()
 WHERE order_id = %(order_id)s
   AND revoked_at IS NULL;

-- set_order_status --
UPDATE orders SET status = %(status)s, updated_at = now() WHERE id = %(order_id)s;

-- open_disputes --
-- Ours still open, the ones asked about longest ago first (disputes_open_idx).
SELECT id FROM disputes WHERE closed_at IS NULL ORDER BY updated_at LIMIT %(limit)s;

-- known_statuses --
SELECT id, status FROM disputes WHERE id = ANY(%(ids)s::text[]);

-- warn_deadlines --
-- Open disputes whose challenge deadline is less than 48 h away, each warned about once.
UPDATE disputes
   SET deadline_warned_at = now()
 WHERE closed_at IS NULL
   AND challenge_required_by < now() + interval '48 hours'
   AND deadline_warned_at IS NULL
RETURNING id, order_id, invoice_id, amount, currency, challenge_required_by;

-- list_disputes --
-- For ops: the nearest deadline first.
SELECT id AS dispute_id, order_id, invoice_id, amount, currency, status, stage, challenge_required_by
  FROM disputes
 WHERE closed_at IS NULL OR NOT %(open_only)s
 ORDER BY challenge_required_by NULLS LAST, created_at;
