-- Every query here reads by primary key, by a foreign key with its index, or walks a partial index of
-- what waits for a person; each list has a LIMIT. A page costs a few index probes at any table size.

-- last_audit_run --
-- The ledger audit sweep's last run, finished or not, failed or not (sweep_runs_started_idx is
-- by time, so a per-name probe: sweep_runs is kept 30 days, a few thousand rows). Its counts are
-- audit.run's result: `violations` is the list of what it found.
SELECT started_at, finished_at, error, jsonb_array_length(counts -> 'violations') AS violations
  FROM sweep_runs
 WHERE name = 'audit'
 ORDER BY started_at DESC
 LIMIT 1;

-- inbox --
-- What waits for a person, oldest first (what ops.sql's needs_a_human counts, each case once):
-- open discrepancies (a failed automatic refund's, kind automatic_refund_failed, shows as its
-- refund, with Retry; a row the reconciler left to a person is a discrepancy too), deliveries that
-- ended in error (not the synthetic ones: their discrepancy stands for them), and payouts of the
-- last 30 days that failed or came back with nothing paid to that seller since. Each branch walks
-- its partial index; `kind` ('' = all) keeps the others from running at all.
SELECT kind, id, since, title, detail, order_id, invoice_id, refund_id, dispute_id, payment_id,
       object_id, amount, currency, payout_id, seller_id
  FROM ((SELECT 'discrepancy' AS kind, id::text AS id, created_at AS since, kind AS title, detail,
                order_id, invoice_id, refund_id, dispute_id, NULL::text AS payment_id,
                NULL::text AS object_id, amount, currency, payout_id, NULL::uuid AS seller_id
           FROM discrepancies
          WHERE resolved_at IS NULL AND kind <> 'automatic_refund_failed'
            AND %(kind)s IN ('', 'discrepancy')
          ORDER BY created_at LIMIT %(limit)s)
        UNION ALL
        (SELECT 'refund', r.id::text, d.created_at, 'automatic refund failed', d.detail,
                r.order_id, r.invoice_id, NULL, NULL, NULL, d.id::text, r.amount, r.currency, NULL, NULL
           FROM discrepancies d
           JOIN refunds r ON r.id = d.refund_id
          WHERE d.resolved_at IS NULL AND d.kind = 'automatic_refund_failed'
            AND %(kind)s IN ('', 'refund')
          ORDER BY d.created_at LIMIT %(limit)s)
        UNION ALL
        (SELECT 'payout', p.id::text, coalesce(p.reversed_at, p.failed_at), 'payout ' || p.status,
                coalesce(p.error_message, ''), NULL, NULL, NULL, NULL, NULL, NULL, p.amount, p.currency,
                p.id, p.seller_id
           FROM payouts p
          WHERE (p.failed_at > now() - interval '30 days' OR p.reversed_at > now() - interval '30 days')
            AND p.status IN ('failed', 'reversed')
            AND NOT EXISTS (SELECT 1 FROM payouts n
                             WHERE n.seller_id = p.seller_id AND n.currency = p.currency
                               AND n.created_at > p.created_at AND n.status IN ('pending', 'paid'))
            AND %(kind)s IN ('', 'payout')
          ORDER BY 3 LIMIT %(limit)s)
        UNION ALL
        (SELECT 'delivery', id::text, received_at, coalesce(event_type, 'delivery'), processing_result,
                NULL, NULL, NULL, NULL, webhook_payment_id(payload), NULL, NULL, NULL, NULL, NULL
           FROM hyperswitch_webhook_log
          WHERE processing_result LIKE 'error%%' AND user_agent IS DISTINCT FROM 'veza-worker-reconciler'
            AND %(kind)s IN ('', 'delivery')
          ORDER BY received_at LIMIT %(limit)s)) AS waiting
 ORDER BY since, kind, id
 LIMIT %(limit)s;

-- inbox_counts --
-- How many of each kind wait (the same partial indexes).
SELECT (SELECT count(*) FROM discrepancies
         WHERE resolved_at IS NULL AND kind <> 'automatic_refund_failed') AS discrepancy,
       (SELECT count(*) FROM discrepancies
         WHERE resolved_at IS NULL AND kind = 'automatic_refund_failed') AS refund,
       (SELECT count(*) FROM payouts p
         WHERE (p.failed_at > now() - interval '30 days' OR p.reversed_at > now() - interval '30 days')
           AND p.status IN ('failed', 'reversed')
           AND NOT EXISTS (SELECT 1 FROM payouts n
                            WHERE n.seller_id = p.seller_id AND n.currency = p.currency
                              AND n.created_at > p.created_at AND n.status IN ('pending', 'paid')))
         AS payout,
       (SELECT count(*) FROM hyperswitch_webhook_log
         WHERE processing_result LIKE 'error%%' AND user_agent IS DISTINCT FROM 'veza-worker-reconciler')
         AS delivery;

-- order --
SELECT id, buyer_id, status, total_amount, currency, payment_id, refunded_amount, created_at, updated_at,
       payment_created_at, completed_at, refund_deadline, hold_released_at
  FROM orders
 WHERE id = %(order_id)s;

-- order_items --
-- Each item with its license (one per item, ever).
SELECT i.id, i.track_id, i.seller_id, i.amount, l.id AS license_id, l.created_at AS licensed_at,
       l.revoked_at
  FROM order_items i
  LEFT JOIN licenses l ON l.order_item_id = i.id
 WHERE i.order_id = %(order_id)s
 ORDER BY i.amount DESC, i.id;

-- order_refunds --
SELECT r.id, r.hyperswitch_refund_id, r.amount, r.currency, r.status, r.reason, r.note, r.automatic,
       r.requested_by, r.error_message, r.created_at, r.submitted_at, r.succeeded_at, r.failed_at,
       coalesce((SELECT array_agg(ri.order_item_id ORDER BY ri.order_item_id)
                   FROM refund_items ri WHERE ri.refund_id = r.id), '{}') AS items
  FROM refunds r
 WHERE r.order_id = %(order_id)s
 ORDER BY r.created_at
 LIMIT 100;

-- order_disputes --
SELECT id, payment_id, amount, currency, stage, status, reason, challenge_required_by, created_at,
       updated_at, closed_at
  FROM disputes
 WHERE order_id = %(order_id)s
 ORDER BY created_at
 LIMIT 100;

-- order_transfers --
SELECT id, seller_id, amount, currency, status, created_at, updated_at
  FROM seller_transfers
 WHERE order_id = %(order_id)s
 ORDER BY created_at, seller_id
 LIMIT 100;

-- postings --
-- The ledger movements naming an order (its payment, hold release, refunds, disputes), a
-- subscription's invoices, or a payout: each through its partial index.
SELECT t.id, t.key, t.kind, t.created_at, t.refund_id, t.dispute_id, t.invoice_id, t.log_id,
       (SELECT json_agg(json_build_object('account', e.account, 'amount', e.amount, 'currency', e.currency)
                        ORDER BY e.id)
          FROM ledger_entries e WHERE e.transaction_id = t.id) AS entries
  FROM ledger_transactions t
 WHERE t.order_id = %(order_id)s OR t.invoice_id = ANY(%(invoice_ids)s::uuid[]) OR t.payout_id = %(payout_id)s
 ORDER BY t.created_at, t.key
 LIMIT 200;

-- discrepancies_of --
-- The discrepancies about an order, a subscription's invoices, or a payout.
SELECT id, kind, detail, amount, currency, created_at, resolved_at, resolved_by, resolution
  FROM discrepancies
 WHERE order_id = %(order_id)s OR invoice_id = ANY(%(invoice_ids)s::uuid[]) OR payout_id = %(payout_id)s
 ORDER BY created_at
 LIMIT 100;

-- payment_deliveries --
-- The stored deliveries about these payments (their payment, refund and dispute events), in the
-- order they arrived (webhook_log_payment_idx).
SELECT id, received_at, event_type, event_id, processing_result, processed_at, user_agent,
       webhook_payment_id(payload) AS payment_id
  FROM hyperswitch_webhook_log
 WHERE webhook_payment_id(payload) = ANY(%(payment_ids)s::text[]) AND signature_valid
 ORDER BY id
 LIMIT 200;

-- subscription --
SELECT s.id, s.user_id, s.status, s.trial_ends_at, s.current_period_start, s.current_period_end,
       s.cancel_at_period_end, s.canceled_at, s.past_due_since, s.dunning_step,
       s.payment_method_id IS NOT NULL AS has_payment_method, s.created_at, s.updated_at,
       p.id AS plan_id, p.name AS plan_name, p.amount AS plan_amount, p.currency AS plan_currency,
       p.interval AS plan_interval, p.trial_days AS plan_trial_days,
       n.id AS pending_plan_id, n.name AS pending_plan_name, n.amount AS pending_plan_amount,
       n.currency AS pending_plan_currency, n.interval AS pending_plan_interval
  FROM user_subscriptions s
  JOIN subscription_plans p ON p.id = s.plan_id
  LEFT JOIN subscription_plans n ON n.id = s.pending_plan_id
 WHERE s.id = %(subscription_id)s;

-- subscription_invoices --
-- Never the client_secret: the console shows no secret.
SELECT id, kind, plan_id, amount, currency, status, payment_id, attempt, period_start, period_end,
       created_at, paid_at, failed_at
  FROM subscription_invoices
 WHERE subscription_id = %(subscription_id)s
 ORDER BY created_at, attempt
 LIMIT 200;

-- invoice_refunds --
SELECT id, invoice_id, hyperswitch_refund_id, amount, currency, status, note, automatic, error_message,
       created_at, submitted_at, succeeded_at, failed_at
  FROM refunds
 WHERE invoice_id = ANY(%(invoice_ids)s::uuid[])
 ORDER BY created_at
 LIMIT 100;

-- invoice_disputes --
SELECT id, invoice_id, payment_id, amount, currency, stage, status, challenge_required_by, created_at,
       closed_at
  FROM disputes
 WHERE invoice_id = ANY(%(invoice_ids)s::uuid[])
 ORDER BY created_at
 LIMIT 100;

-- user_subscriptions --
SELECT s.id, s.status, s.created_at, p.name AS plan_name
  FROM user_subscriptions s
  JOIN subscription_plans p ON p.id = s.plan_id
 WHERE s.user_id = %(user_id)s
 ORDER BY s.created_at DESC
 LIMIT 20;

-- user_orders --
SELECT id, status, total_amount, currency, created_at
  FROM orders
 WHERE buyer_id = %(user_id)s
 ORDER BY created_at DESC
 LIMIT 20;

-- seller_transfers --
SELECT id, order_id, amount, currency, status, created_at, updated_at
  FROM seller_transfers
 WHERE seller_id = %(seller_id)s
 ORDER BY created_at DESC
 LIMIT 100;

-- open_disputes --
-- Nearest deadline first (disputes_open_idx).
SELECT id, payment_id, order_id, invoice_id, amount, currency, stage, status, reason,
       challenge_required_by, created_at
  FROM disputes
 WHERE closed_at IS NULL
 ORDER BY challenge_required_by NULLS LAST, created_at
 LIMIT %(limit)s;

-- open_disputes_count --
SELECT count(*) FROM disputes WHERE closed_at IS NULL;

-- delivery --
-- One stored delivery; its body as stored (the page redacts secrets before showing it).
SELECT id, received_at, payload, signature_valid, processing_result, source_ip, user_agent, request_id,
       event_type, event_id, processed_at, attempts, last_error, suppressed_count,
       webhook_payment_id(payload) AS payment_id
  FROM hyperswitch_webhook_log
 WHERE id = %(log_id)s;

-- find --
-- Every object an id names: each branch one unique-index probe (or none, for a NULL parameter).
SELECT 'order' AS kind, id::text AS target FROM orders WHERE id = %(uuid)s
UNION ALL
SELECT 'order', id::text FROM orders WHERE payment_id = %(text)s
UNION ALL
SELECT 'order', order_id::text FROM order_items WHERE id = %(uuid)s
UNION ALL
SELECT 'subscription', id::text FROM user_subscriptions WHERE id = %(uuid)s
UNION ALL
SELECT 'subscription', subscription_id::text FROM subscription_invoices WHERE id = %(uuid)s
UNION ALL
SELECT 'subscription', subscription_id::text FROM subscription_invoices WHERE payment_id = %(text)s
UNION ALL
SELECT CASE WHEN r.order_id IS NOT NULL THEN 'order' ELSE 'subscription' END,
       coalesce(r.order_id, i.subscription_id)::text
  FROM refunds r LEFT JOIN subscription_invoices i ON i.id = r.invoice_id
 WHERE r.id = %(uuid)s
UNION ALL
SELECT CASE WHEN r.order_id IS NOT NULL THEN 'order' ELSE 'subscription' END,
       coalesce(r.order_id, i.subscription_id)::text
  FROM refunds r LEFT JOIN subscription_invoices i ON i.id = r.invoice_id
 WHERE r.hyperswitch_refund_id = %(text)s
UNION ALL
SELECT CASE WHEN d.order_id IS NOT NULL THEN 'order' WHEN i.id IS NOT NULL THEN 'subscription'
            ELSE 'dispute' END,
       coalesce(d.order_id::text, i.subscription_id::text, d.id)
  FROM disputes d LEFT JOIN subscription_invoices i ON i.id = d.invoice_id
 WHERE d.id = %(text)s
UNION ALL
SELECT 'payout', id::text
  FROM payouts
 WHERE id = %(uuid)s OR hyperswitch_payout_id = %(text)s OR merchant_reference = %(text)s
UNION ALL
SELECT 'user', %(uuid)s::text
 WHERE EXISTS (SELECT 1 FROM orders WHERE buyer_id = %(uuid)s)
    OR EXISTS (SELECT 1 FROM user_subscriptions WHERE user_id = %(uuid)s)
UNION ALL
SELECT 'seller', %(uuid)s::text
 WHERE EXISTS (SELECT 1 FROM seller_balances WHERE seller_id = %(uuid)s)
    OR EXISTS (SELECT 1 FROM seller_transfers WHERE seller_id = %(uuid)s)
    OR EXISTS (SELECT 1 FROM payouts WHERE seller_id = %(uuid)s)
    OR EXISTS (SELECT 1 FROM seller_payout_holds WHERE seller_id = %(uuid)s)
UNION ALL
SELECT 'delivery', id::text FROM hyperswitch_webhook_log WHERE id = %(number)s;

-- seller_known --
-- A seller is anyone with a balance, a transfer, a payout or a hold.
SELECT EXISTS (SELECT 1 FROM seller_balances WHERE seller_id = %(seller_id)s)
    OR EXISTS (SELECT 1 FROM seller_transfers WHERE seller_id = %(seller_id)s)
    OR EXISTS (SELECT 1 FROM payouts WHERE seller_id = %(seller_id)s)
    OR EXISTS (SELECT 1 FROM seller_payout_holds WHERE seller_id = %(seller_id)s);

-- seller_holds --
-- A seller's payout holds, newest first: the open one (released_at NULL) and the closed ones.
SELECT id, reason, held_at, released_at
  FROM seller_payout_holds
 WHERE seller_id = %(seller_id)s
 ORDER BY held_at DESC
 LIMIT 20;

-- seller_payout_method --
SELECT customer_id, payout_method_id, payout_type, updated_at
  FROM seller_payout_methods
 WHERE seller_id = %(seller_id)s;

-- payout --
SELECT id, seller_id, amount, currency, status, hyperswitch_payout_id, merchant_reference, customer_id,
       payout_method_id, payout_type, psp_status, error_message, created_at, updated_at, submitted_at,
       paid_at, failed_at, reversed_at
  FROM payouts
 WHERE id = %(payout_id)s;

-- payout_transfers --
-- The transfers a payout carries (seller_transfers_payout_idx).
SELECT id, order_id, amount, currency, status, created_at, updated_at
  FROM seller_transfers
 WHERE payout_id = %(payout_id)s
 ORDER BY created_at, id
 LIMIT 200;
