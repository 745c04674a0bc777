-- post --
-- One movement, in one statement: the transaction under its idempotency key (a second post of the
-- same key writes nothing), its entries, and the sellers' read model grown by them, locked in
-- (seller_id, currency) order, the one order every balance writer keeps. Postgres checks at
-- commit that the entries balance (ledger_check_balanced).
WITH tx AS (
    INSERT INTO ledger_transactions (key, kind, order_id, refund_id, dispute_id, invoice_id, payout_id,
                                     log_id, corrects)
    VALUES (%(key)s, %(kind)s, %(order_id)s, %(refund_id)s, %(dispute_id)s, %(invoice_id)s, %(payout_id)s,
            %(log_id)s, %(corrects)s)
        ON CONFLICT (key) DO NOTHING
 RETURNING id
), legs AS (
    INSERT INTO ledger_entries (transaction_id, account, currency, amount)
    SELECT tx.id, e.account, %(currency)s, e.amount
      FROM tx, unnest(%(accounts)b::text[], %(amounts)b::bigint[]) AS e (account, amount)
 RETURNING account, amount
), sellers AS (
    SELECT split_part(account, ':', 2)::uuid AS seller_id,
           coalesce(sum(amount) FILTER (WHERE account LIKE '%%:held'), 0) AS held,
           coalesce(sum(amount) FILTER (WHERE account LIKE '%%:available'), 0) AS available,
           coalesce(sum(amount) FILTER (WHERE account LIKE '%%:in_transit'), 0) AS in_transit
      FROM legs
     WHERE account LIKE 'seller:%%'
     GROUP BY 1
), balances AS (
    INSERT INTO seller_balances AS b (seller_id, currency, held, available, in_transit)
    SELECT seller_id, %(currency)s, held, available, in_transit
      FROM sellers
     ORDER BY seller_id
        ON CONFLICT (seller_id, currency) DO UPDATE
       SET held = b.held + excluded.held,
           available = b.available + excluded.available,
           in_transit = b.in_transit + excluded.in_transit,
           updated_at = now()
 RETURNING 1
)
SELECT (SELECT count(*) FROM tx) AS posted, (SELECT count(*) FROM balances) AS sellers;

-- entries_of --
-- The entries of one movement, by its key: what its exact reverse gives back.
SELECT e.account, e.currency, e.amount
  FROM ledger_transactions t
  JOIN ledger_entries e ON e.transaction_id = t.id
 WHERE t.key = %(key)s
 ORDER BY e.id;

-- order_held --
-- What each seller of an order still holds from it: what the order's hold release moves.
SELECT split_part(e.account, ':', 2)::uuid AS seller_id, e.currency, sum(e.amount)::bigint AS amount
  FROM ledger_transactions t
  JOIN ledger_entries e ON e.transaction_id = t.id
 WHERE t.order_id = %(order_id)s
   AND e.account LIKE 'seller:%%:held'
 GROUP BY 1, 2
HAVING sum(e.amount) <> 0
 ORDER BY 1;

-- seller_balances --
SELECT currency, held, available, in_transit
  FROM seller_balances
 WHERE seller_id = %(seller_id)s
   AND (%(currency)s::text IS NULL OR currency = %(currency)s)
 ORDER BY currency;

-- seller_entries --
-- A seller's statement, newest first (ledger_entries_account_idx).
SELECT t.created_at AS at, t.kind, split_part(e.account, ':', 3) AS account, e.amount, e.currency,
       t.order_id, t.refund_id, t.dispute_id, t.payout_id
  FROM ledger_entries e
  JOIN ledger_transactions t ON t.id = e.transaction_id
 WHERE e.account = ANY(%(accounts)s::text[])
   AND (%(currency)s::text IS NULL OR e.currency = %(currency)s)
 ORDER BY e.id DESC
 LIMIT %(limit)s;
