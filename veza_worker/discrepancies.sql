-- open_discrepancy --
-- A case automation cannot decide, for a person. One open row per (kind, object): a replay, a
-- second run of `settle` or the reconciler finds the row already open and adds nothing.
INSERT INTO discrepancies (kind, order_id, invoice_id, refund_id, dispute_id, payout_id, subject, amount,
                           currency, detail)
VALUES (%(kind)s, %(order_id)s, %(invoice_id)s, %(refund_id)s, %(dispute_id)s, %(payout_id)s, %(subject)s,
        %(amount)s, %(currency)s, %(detail)s)
    ON CONFLICT DO NOTHING
RETURNING id;

-- open_discrepancy_once --
-- A finding that a later run sees again (settle's): opened only if no row, open or resolved, was
-- ever opened for that (kind, object); the unique index still settles two runs at once.
INSERT INTO discrepancies (kind, order_id, invoice_id, refund_id, dispute_id, payout_id, subject, amount,
                           currency, detail)
SELECT %(kind)s, %(order_id)s, %(invoice_id)s, %(refund_id)s, %(dispute_id)s, %(payout_id)s, %(subject)s,
       %(amount)s, %(currency)s, %(detail)s
 WHERE NOT EXISTS (
       SELECT 1 FROM discrepancies
        WHERE kind = %(kind)s
          AND order_id IS NOT DISTINCT FROM %(order_id)s::uuid
          AND invoice_id IS NOT DISTINCT FROM %(invoice_id)s::uuid
          AND refund_id IS NOT DISTINCT FROM %(refund_id)s::uuid
          AND dispute_id IS NOT DISTINCT FROM %(dispute_id)s::text
          AND payout_id IS NOT DISTINCT FROM %(payout_id)s::uuid
          AND subject = %(subject)s)
    ON CONFLICT DO NOTHING
RETURNING id;

-- close_resolved_itself --
-- A case that resolved itself, closed by the worker with what settled it.
UPDATE discrepancies
   SET resolved_at = now(), resolved_by = %(by)s, resolution = %(note)s
 WHERE resolved_at IS NULL
   AND kind = %(kind)s
   AND order_id IS NOT DISTINCT FROM %(order_id)s::uuid
   AND invoice_id IS NOT DISTINCT FROM %(invoice_id)s::uuid
   AND refund_id IS NOT DISTINCT FROM %(refund_id)s::uuid
   AND payout_id IS NOT DISTINCT FROM %(payout_id)s::uuid
RETURNING id;

-- list_discrepancies --
-- Oldest first; all of them, or the open ones (discrepancies_open_idx).
SELECT id, kind, order_id, invoice_id, refund_id, dispute_id, payout_id, amount, currency, detail,
       created_at, resolved_at, resolved_by, resolution
  FROM discrepancies
 WHERE resolved_at IS NULL OR NOT %(open_only)s
 ORDER BY created_at, id;

-- resolve_discrepancy --
UPDATE discrepancies
   SET resolved_at = now(), resolved_by = %(by)s, resolution = %(note)s
 WHERE id = %(id)s AND resolved_at IS NULL
RETURNING id, kind, order_id, invoice_id, refund_id, dispute_id, payout_id, amount, currency, detail,
          created_at, resolved_at, resolved_by, resolution;

-- discrepancy_exists --
SELECT resolved_at IS NOT NULL FROM discrepancies WHERE id = %(id)s;

-- resolve_about --
-- Close the open discrepancy of a kind about one refund, if there is one (discrepancies_one_open).
UPDATE discrepancies
   SET resolved_at = now(), resolved_by = %(by)s, resolution = %(note)s
 WHERE resolved_at IS NULL AND kind = %(kind)s AND refund_id = %(refund_id)s
RETURNING id;
