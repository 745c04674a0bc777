-- balanced --
-- Every transaction has entries, and they sum to zero per currency (Postgres refuses anything
-- else at commit; this finds what a disabled trigger let through). MATERIALIZED: the LIMIT must
-- not steer the planner to walking a million entries in index order.
WITH off AS MATERIALIZED (
    SELECT transaction_id, currency, sum(amount) AS total
      FROM ledger_entries
     GROUP BY transaction_id, currency
    HAVING sum(amount) <> 0
), empty AS MATERIALIZED (
    SELECT t.key FROM ledger_transactions t
     WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transaction_id = t.id)
)
(SELECT 'transaction ' || t.key AS object, 'is off by ' || off.total || ' ' || off.currency AS detail
   FROM off JOIN ledger_transactions t ON t.id = off.transaction_id
  LIMIT %(limit)s)
UNION ALL
(SELECT 'transaction ' || key, 'has no entries' FROM empty LIMIT %(limit)s);

-- read_model --
-- seller_balances equals the sum of each seller account's entries.
WITH ledger AS (
    SELECT split_part(account, ':', 2)::uuid AS seller_id, currency,
           coalesce(sum(amount) FILTER (WHERE account LIKE '%%:held'), 0) AS held,
           coalesce(sum(amount) FILTER (WHERE account LIKE '%%:available'), 0) AS available,
           coalesce(sum(amount) FILTER (WHERE account LIKE '%%:in_transit'), 0) AS in_transit
      FROM ledger_entries
     WHERE account LIKE 'seller:%%'
     GROUP BY 1, 2
)
SELECT 'seller ' || coalesce(l.seller_id, b.seller_id) || ' ' || coalesce(l.currency, b.currency) AS object,
       'seller_balances shows held/available/in_transit '
       || concat_ws('/', coalesce(b.held, 0), coalesce(b.available, 0), coalesce(b.in_transit, 0))
       || ', the ledger ' || concat_ws('/', coalesce(l.held, 0), coalesce(l.available, 0), coalesce(l.in_transit, 0))
       AS detail
  FROM ledger l
  FULL JOIN seller_balances b ON b.seller_id = l.seller_id AND b.currency = l.currency
 WHERE coalesce(l.held, 0) <> coalesce(b.held, 0)
    OR coalesce(l.available, 0) <> coalesce(b.available, 0)
    OR coalesce(l.in_transit, 0) <> coalesce(b.in_transit, 0)
 LIMIT %(limit)s;

-- movements --
-- Both ways: every movement the PSP made (as our rows record it) has exactly one posting of its
-- amount (corrections of it included) and every posting of a PSP movement has one. The amount is
-- read on `world`; money kept for nothing on platform:suspense (it may come from revenue); a
-- payout's creation and failure on the seller's in_transit (money that never left us).
-- Payouts: created for every payout; paid for one paid or reversed (a reversal follows a
-- payment); failed for a failed one; reversed for a reversed one.
WITH expected (key, object, account, amount) AS (
    SELECT 'order:' || id || ':paid', 'order ' || id, 'world', -total_amount
      FROM orders
     WHERE status IN ('completed', 'refund_pending', 'refunded', 'disputed', 'charged_back')
       AND total_amount > 0
    UNION ALL
    SELECT 'refund:' || id || ':succeeded', 'refund ' || id, 'world', amount
      FROM refunds WHERE status = 'succeeded'
    UNION ALL
    SELECT 'refund:' || id || ':kept', 'refund ' || id, 'platform:suspense', amount
      FROM refunds WHERE automatic AND retry_of IS NULL
    UNION ALL
    SELECT 'invoice:' || id || ':paid', 'invoice ' || id, 'world', -amount
      FROM subscription_invoices WHERE status = 'paid' AND amount > 0
    UNION ALL
    SELECT 'dispute:' || id || ':opened', 'dispute ' || id, 'world', amount
      FROM disputes
     WHERE status <> 'none' AND (order_id IS NOT NULL OR invoice_id IS NOT NULL) AND amount > 0
    UNION ALL
    SELECT 'dispute:' || id || ':closed', 'dispute ' || id, 'world', -amount
      FROM disputes
     WHERE status IN ('dispute_won', 'dispute_cancelled')
       AND (order_id IS NOT NULL OR invoice_id IS NOT NULL) AND amount > 0
    UNION ALL
    SELECT 'payout:' || id || ':created', 'payout ' || id, 'in_transit', amount FROM payouts
    UNION ALL
    SELECT 'payout:' || id || ':paid', 'payout ' || id, 'world', amount
      FROM payouts WHERE status IN ('paid', 'reversed')
    UNION ALL
    SELECT 'payout:' || id || ':failed', 'payout ' || id, 'in_transit', -amount
      FROM payouts WHERE status = 'failed'
    UNION ALL
    SELECT 'payout:' || id || ':reversed', 'payout ' || id, 'world', -amount
      FROM payouts WHERE status = 'reversed'
), measured AS (
    SELECT transaction_id,
           sum(amount) FILTER (WHERE account = 'world') AS world,
           sum(amount) FILTER (WHERE account = 'platform:suspense') AS suspense,
           sum(amount) FILTER (WHERE account LIKE 'seller:%%:in_transit') AS in_transit
      FROM ledger_entries
     WHERE account IN ('world', 'platform:suspense') OR account LIKE 'seller:%%:in_transit'
     GROUP BY transaction_id
), posted AS (
    SELECT coalesce(t.corrects, t.key) AS key,
           count(*) FILTER (WHERE t.corrects IS NULL) AS postings,
           coalesce(sum(m.world), 0) AS world,
           coalesce(sum(m.suspense), 0) AS suspense,
           coalesce(sum(m.in_transit), 0) AS in_transit
      FROM ledger_transactions t
      LEFT JOIN measured m ON m.transaction_id = t.id
     GROUP BY 1
), compared AS (
    SELECT x.key AS expected_key, x.object, x.account, x.amount AS expected, p.key, p.postings,
           CASE x.account WHEN 'platform:suspense' THEN p.suspense
                          WHEN 'in_transit' THEN p.in_transit ELSE p.world END AS moved
      FROM expected x
      FULL JOIN posted p ON p.key = x.key
)
SELECT coalesce(object, 'transaction ' || key) AS object,
       CASE WHEN key IS NULL THEN 'has no posting ' || expected_key
            WHEN expected_key IS NULL THEN 'posting ' || key || ' is for a movement the payment provider never made'
            WHEN postings <> 1 THEN key || ' is posted ' || postings || ' times'
            ELSE key || ' moved ' || moved || ' on ' || account || ', the movement was ' || expected END AS detail
  FROM compared
 WHERE (expected_key IS NULL
        AND key ~ '^(order:.*:paid|refund:.*:(succeeded|kept)|invoice:.*:paid|dispute:.*:(opened|closed)|payout:.*:(created|paid|failed|reversed))$')
    OR key IS NULL OR moved <> expected OR postings <> 1
 LIMIT %(limit)s;

-- earnings --
-- What each seller holds from each paid order (held, available or in transit alike) is exactly
-- their items that no refund and no open or lost dispute took: a refund or chargeback never debits
-- twice, a win never gives back what a refund took.
WITH live AS MATERIALIZED (
    SELECT i.order_id, i.seller_id, sum(i.amount) FILTER (
               WHERE NOT EXISTS (SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id
                                  WHERE ri.order_item_id = i.id AND r.status = 'succeeded')
                 AND NOT EXISTS (SELECT 1 FROM dispute_items di JOIN disputes d ON d.id = di.dispute_id
                                  WHERE di.order_item_id = i.id
                                    AND d.status NOT IN ('dispute_won', 'dispute_cancelled'))) AS amount
      FROM order_items i
      JOIN orders o ON o.id = i.order_id
     WHERE o.status IN ('completed', 'refund_pending', 'refunded', 'disputed', 'charged_back')
     GROUP BY 1, 2
), held AS MATERIALIZED (
    SELECT t.order_id, split_part(e.account, ':', 2)::uuid AS seller_id, sum(e.amount) AS amount
      FROM ledger_transactions t
      JOIN ledger_entries e ON e.transaction_id = t.id
     WHERE t.order_id IS NOT NULL AND e.account LIKE 'seller:%%'
     GROUP BY 1, 2
)
SELECT 'order ' || coalesce(l.order_id, h.order_id) AS object,
       'seller ' || coalesce(l.seller_id, h.seller_id) || ' holds ' || coalesce(h.amount, 0)
       || ' from it; their items left are worth ' || coalesce(l.amount, 0) AS detail
  FROM live l
  FULL JOIN held h ON h.order_id = l.order_id AND h.seller_id = l.seller_id
 WHERE coalesce(l.amount, 0) <> coalesce(h.amount, 0)

-- in_transit --
-- A seller's in_transit is exactly their payouts not final yet: a payout whose money came back
-- twice, or never, shows here (polar#9666 was caught by such a check).
WITH held AS (
    SELECT seller_id, currency, in_transit FROM seller_balances WHERE in_transit <> 0
), pending AS (
    SELECT seller_id, currency, sum(amount) AS amount FROM payouts WHERE status = 'pending' GROUP BY 1, 2
)
SELECT 'seller ' || seller_id || ' ' || currency AS object,
       'has ' || coalesce(h.in_transit, 0) || ' in transit, its pending payouts '
       || coalesce(p.amount, 0) AS detail
  FROM held h
  FULL JOIN pending p USING (seller_id, currency)
 WHERE coalesce(h.in_transit, 0) <> coalesce(p.amount, 0)
 LIMIT %(limit)s;

-- licenses --
-- No live license for an item refunded or charged back (cost: refunds and lost disputes, not licenses).
SELECT 'license ' || l.id AS object,
       'is live for item ' || l.order_item_id || ' of order ' || l.order_id || ', which was ' || why AS detail
  FROM (SELECT ri.order_item_id, 'refunded by refund ' || r.id AS why
          FROM refunds r JOIN refund_items ri ON ri.refund_id = r.id
         WHERE r.status = 'succeeded'
        UNION ALL
        SELECT di.order_item_id, 'charged back by dispute ' || d.id
          FROM disputes d JOIN dispute_items di ON di.dispute_id = d.id
         WHERE d.status IN ('dispute_lost', 'dispute_accepted', 'dispute_expired')) gone
  JOIN licenses l ON l.order_item_id = gone.order_item_id
 WHERE l.revoked_at IS NULL
 LIMIT %(limit)s;

-- suspense --
-- Money in suspense for over a day has its automatic refund under way (pending) or left to a
-- human (failed); anything else is money we keep for nothing. A retry of a failed automatic
-- refund drains the suspense its first one filled, and so does a refund made at the PSP (or a
-- post-capture cancel) of that invoice's payment: they are counted together, under the first.
WITH held AS (
    SELECT coalesce(r.retry_of,
                    CASE WHEN NOT r.automatic AND r.invoice_id IS NOT NULL THEN
                        (SELECT a.id FROM refunds a
                          WHERE a.invoice_id = r.invoice_id AND a.automatic AND a.retry_of IS NULL
                          ORDER BY a.created_at LIMIT 1)
                    END,
                    t.refund_id) AS refund_id,
           e.currency, sum(e.amount) AS amount,
           min(t.created_at) AS since
      FROM ledger_transactions t
      JOIN ledger_entries e ON e.transaction_id = t.id
      LEFT JOIN refunds r ON r.id = t.refund_id
     WHERE e.account = 'platform:suspense'
     GROUP BY 1, 2
)
SELECT 'refund ' || coalesce(h.refund_id::text, '(none)') AS object,
       h.amount || ' ' || h.currency || ' in platform:suspense since ' || h.since
       || ' without a pending or failed automatic refund' AS detail
  FROM held h
 WHERE h.amount <> 0
   AND h.since < now() - interval '1 day'
   AND NOT EXISTS (SELECT 1 FROM refunds r
                    WHERE (r.id = h.refund_id OR r.retry_of = h.refund_id)
                      AND r.automatic AND r.status IN ('pending', 'failed'))
 LIMIT %(limit)s;

-- unallocated --
-- Every posting to platform:unallocated has a discrepancy (open or resolved) naming its object.
SELECT 'transaction ' || t.key AS object,
       'moved ' || e.amount || ' ' || e.currency || ' on platform:unallocated with no discrepancy' AS detail
  FROM ledger_transactions t
  JOIN ledger_entries e ON e.transaction_id = t.id
 WHERE e.account = 'platform:unallocated'
   AND NOT EXISTS (
       SELECT 1 FROM discrepancies d
        WHERE d.order_id = t.order_id OR d.refund_id = t.refund_id OR d.dispute_id = t.dispute_id
           OR d.invoice_id = t.invoice_id OR d.payout_id = t.payout_id)
 LIMIT %(limit)s;

-- last_audit --
-- What the last audit sweep found: the veza_ledger_violations gauge and `status`.
SELECT finished_at, jsonb_array_length(counts -> 'violations')
  FROM sweep_runs
 WHERE name = 'audit' AND finished_at IS NOT NULL AND error IS NULL
 ORDER BY started_at DESC
 LIMIT 1;
