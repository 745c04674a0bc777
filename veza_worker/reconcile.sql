-- due_before --
-- A row is due when nobody checked it during this tick, nor in the cool_down before it started:
-- two ticks started a moment apart do not both ask the PSP about the same row.
SELECT clock_timestamp() - %(cool_down)s;

-- claim_order --
-- One stuck order, locked for this tick: pending with a payment, older than stuck_after, due.
-- Never-checked rows first, oldest first.
-- Uses orders_stuck_idx: the cost is the stuck rows', not the table's.
-- "Stuck" counts from the payment's creation (confirm-order), else from the order's.
SELECT o.id, o.payment_id AS psp_id, now() - coalesce(o.payment_created_at, o.created_at) AS stuck_for,
       coalesce(s.checks, 0) AS checks
  FROM orders o
  LEFT JOIN reconcile_state s ON s.kind = 'order' AND s.row_id = o.id
 WHERE o.status = 'pending'
   AND o.payment_id IS NOT NULL
   AND coalesce(o.payment_created_at, o.created_at) < now() - %(stuck_after)s
   AND (s.last_checked_at IS NULL OR s.last_checked_at < %(due_before)s)
   AND s.gave_up_at IS NULL
   AND o.id <> ALL(%(tried)s::uuid[])
 ORDER BY s.last_checked_at NULLS FIRST, coalesce(o.payment_created_at, o.created_at)
 LIMIT 1
   FOR UPDATE OF o SKIP LOCKED;

-- claim_refund --
-- One submitted refund with no final answer after stuck_after (refunds_stuck_idx). Its order is
-- the row locked: every writer locks the order before the refund.
SELECT r.id, r.hyperswitch_refund_id AS psp_id, now() - r.submitted_at AS stuck_for,
       coalesce(s.checks, 0) AS checks
  FROM refunds r
  JOIN orders o ON o.id = r.order_id
  LEFT JOIN reconcile_state s ON s.kind = 'refund' AND s.row_id = r.id
 WHERE r.status = 'pending'
   AND r.submitted_at IS NOT NULL
   AND r.submitted_at < now() - %(stuck_after)s
   AND (s.last_checked_at IS NULL OR s.last_checked_at < %(due_before)s)
   AND s.gave_up_at IS NULL
   AND r.id <> ALL(%(tried)s::uuid[])
 ORDER BY s.last_checked_at NULLS FIRST, r.submitted_at
 LIMIT 1
   FOR UPDATE OF o SKIP LOCKED;

-- claim_invoice_refund --
-- One automatic refund of a subscription invoice, submitted, with no final answer after
-- stuck_after. It has no order: the refund row is the one locked, as its other writers do.
SELECT r.id, r.hyperswitch_refund_id AS psp_id, now() - r.submitted_at AS stuck_for,
       coalesce(s.checks, 0) AS checks
  FROM refunds r
  LEFT JOIN reconcile_state s ON s.kind = 'refund' AND s.row_id = r.id
 WHERE r.status = 'pending'
   AND r.submitted_at IS NOT NULL
   AND r.invoice_id IS NOT NULL
   AND r.submitted_at < now() - %(stuck_after)s
   AND (s.last_checked_at IS NULL OR s.last_checked_at < %(due_before)s)
   AND s.gave_up_at IS NULL
   AND r.id <> ALL(%(tried)s::uuid[])
 ORDER BY s.last_checked_at NULLS FIRST, r.submitted_at
 LIMIT 1
   FOR UPDATE OF r SKIP LOCKED;

-- claim_orphan_refund --
-- One refund never submitted (phase 2 crashed or was ambiguous), older than orphan_after
-- (refunds_orphan_idx). Its order is the row locked, as above.
SELECT r.id, r.hyperswitch_refund_id AS psp_id, now() - r.created_at AS stuck_for,
       coalesce(s.checks, 0) AS checks
  FROM refunds r
  JOIN orders o ON o.id = r.order_id
  LEFT JOIN reconcile_state s ON s.kind = 'refund' AND s.row_id = r.id
 WHERE r.status = 'pending'
   AND r.submitted_at IS NULL
   AND NOT r.automatic
   AND r.created_at < now() - %(stuck_after)s
   AND (s.last_checked_at IS NULL OR s.last_checked_at < %(due_before)s)
   AND s.gave_up_at IS NULL
   AND r.id <> ALL(%(tried)s::uuid[])
 ORDER BY s.last_checked_at NULLS FIRST, r.created_at
 LIMIT 1
   FOR UPDATE OF o SKIP LOCKED;

-- claim_invoice --
-- One pending subscription invoice older than stuck_after: a first payment, a renewal or a
-- dunning attempt (subscription_invoices_pending_idx). Its subscription is the row locked: every
-- writer locks the subscription before the invoice.
-- stuck_for counts from when the PSP got the payment: its expiry is the payment's, not the row's.
SELECT i.id, i.payment_id AS psp_id, now() - coalesce(i.submitted_at, i.created_at) AS stuck_for,
       coalesce(s.checks, 0) AS checks
  FROM subscription_invoices i
  JOIN user_subscriptions u ON u.id = i.subscription_id
  LEFT JOIN reconcile_state s ON s.kind = 'invoice' AND s.row_id = i.id
 WHERE i.status = 'pending'
   AND i.created_at < now() - %(stuck_after)s
   AND (s.last_checked_at IS NULL OR s.last_checked_at < %(due_before)s)
   AND s.gave_up_at IS NULL
   AND i.id <> ALL(%(tried)s::uuid[])
 ORDER BY s.last_checked_at NULLS FIRST, i.created_at
 LIMIT 1
   FOR UPDATE OF u SKIP LOCKED;

-- claim_payout --
-- One payout still pending after stuck_after (payouts_pending_idx), locked as its writers lock
-- it: with its PSP id, asked about by it; without one (an ambiguous create, a crash before the
-- call), looked up by its merchant reference, which then stands in as psp_id.
SELECT p.id, coalesce(p.hyperswitch_payout_id, p.merchant_reference) AS psp_id,
       now() - p.created_at AS stuck_for, coalesce(s.checks, 0) AS checks
  FROM payouts p
  LEFT JOIN reconcile_state s ON s.kind = 'payout' AND s.row_id = p.id
 WHERE p.status = 'pending'
   AND p.created_at < now() - %(stuck_after)s
   AND (s.last_checked_at IS NULL OR s.last_checked_at < %(due_before)s)
   AND s.gave_up_at IS NULL
   AND p.id <> ALL(%(tried)s::uuid[])
 ORDER BY s.last_checked_at NULLS FIRST, p.created_at
 LIMIT 1
   FOR UPDATE OF p SKIP LOCKED;

-- begin_check --
-- The claim's second half: the claim query's snapshot may predate another tick's commit, so the
-- row's state is upserted here, where Postgres serializes two ticks on it. No row back means
-- another tick checked it since the row was due: skip it.
INSERT INTO reconcile_state AS s (kind, row_id, first_checked_at, last_checked_at)
VALUES (%(kind)s, %(row_id)s, clock_timestamp(), clock_timestamp())
    ON CONFLICT (kind, row_id) DO UPDATE
   SET last_checked_at = clock_timestamp()
 WHERE s.last_checked_at < %(due_before)s
RETURNING checks;

-- record_answer --
-- answered: the PSP gave a status. give_up: its answer ended `error:` when applied: not again.
UPDATE reconcile_state
   SET checks = checks + %(answered)s::int,
       last_psp_status = coalesce(%(psp_status)s, last_psp_status),
       gave_up_at = CASE WHEN %(give_up)s THEN now() ELSE gave_up_at END
 WHERE kind = %(kind)s
   AND row_id = %(row_id)s
RETURNING checks;

-- forget_row --
-- The row is settled: nothing to remember about it (reconcile_state holds only open rows).
DELETE FROM reconcile_state WHERE kind = %(kind)s AND row_id = %(row_id)s
RETURNING checks;

-- record_failure --
-- Our own code raised on the row (its transaction was rolled back): count it; at the limit the
-- row is given up on (the claims skip it) until a human looks.
INSERT INTO reconcile_state AS s (kind, row_id, failures, first_checked_at, last_checked_at, gave_up_at)
VALUES (%(kind)s, %(row_id)s, 1, clock_timestamp(), clock_timestamp(),
        CASE WHEN %(give_up_after)s <= 1 THEN now() END)
    ON CONFLICT (kind, row_id) DO UPDATE
   SET failures = s.failures + 1,
       last_checked_at = clock_timestamp(),
       gave_up_at = CASE WHEN s.failures + 1 >= %(give_up_after)s THEN coalesce(s.gave_up_at, now()) END
RETURNING failures;

-- canary_payment --
-- A payment we hold as paid, the most recent: if the PSP cannot find even this one, it is not our
-- objects that are missing but our configuration that is wrong.
-- Any one will do, so the first found ends the scan.
(SELECT payment_id FROM orders WHERE status = 'completed' AND payment_id IS NOT NULL LIMIT 1)
UNION ALL
(SELECT payment_id FROM subscription_invoices WHERE status = 'paid' AND payment_id IS NOT NULL LIMIT 1)
LIMIT 1;
