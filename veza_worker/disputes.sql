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

-- move_transfers --
-- The order's transfers in one status move to another: pending → on_hold while a dispute is
-- open, back when none is.
UPDATE seller_transfers
   SET status = %(to_status)s, updated_at = now()
 WHERE order_id = %(order_id)s
   AND status = %(from_status)s;

-- reverse_open_transfers --
-- A chargeback: what the order still owes its sellers is reversed; a transfer a paid payout
-- carried (`completed`) is never rewritten (the ledger posts the seller's debt instead).
UPDATE seller_transfers
   SET status = 'reversed', updated_at = now()
 WHERE order_id = %(order_id)s
   AND status NOT IN ('reversed', 'completed');

-- open_disputes --
-- Ours still open, the ones the reconciler looked at longest ago (or never) first
-- (disputes_unchecked_idx): each tick moves the ones it looked at to the back of the line.
SELECT id FROM disputes WHERE closed_at IS NULL ORDER BY checked_at NULLS FIRST, updated_at LIMIT %(limit)s;

-- mark_checked --
-- The reconciler has the PSP's word on these disputes, changed or not.
UPDATE disputes SET checked_at = now() WHERE id = ANY(%(ids)s::text[]);

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

-- take_items --
-- The items a dispute took when it opened: a win gives back exactly those, a loss charges them back.
INSERT INTO dispute_items (dispute_id, order_item_id)
SELECT %(dispute_id)s, unnest(%(item_ids)s::uuid[])
    ON CONFLICT DO NOTHING;

-- items_taken --
SELECT order_item_id FROM dispute_items WHERE dispute_id = %(dispute_id)s;

-- revoke_taken_licenses --
UPDATE licenses
   SET revoked_at = now()
 WHERE order_item_id IN (SELECT order_item_id FROM dispute_items WHERE dispute_id = %(dispute_id)s)
   AND revoked_at IS NULL;
