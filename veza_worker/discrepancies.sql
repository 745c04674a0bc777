-- open_discrepancy --
-- A case automation cannot decide, for a person. One open row per (kind, object): a replay, a
-- second run of `settle` or the reconciler finds the row already open and adds nothing.
INSERT INTO discrepancies (kind, order_id, invoice_id, refund_id, dispute_id, payout_id, subject, amount,
                           currency, detail)
VALUES (%(kind)s, %(order_id)s, %(invoice_id)s, %(refund_id)s, %(dispute_id)s, %(payout_id)s, %(subject)s,
        %(amount)s, %(currency)s, %(detail)s)
    ON CONFLICT DO NOTHING
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
