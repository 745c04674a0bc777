-- post --
-- One movement: ledger_post (migrations/0020_ledger_post.sql) writes the transaction under its
-- idempotency key, its entries and the sellers' read model, and returns false when the key was
-- posted before. A database function so that its statements are planned once per connection, not
-- once per posting. Postgres checks at commit that the entries balance (ledger_check_balanced).
SELECT ledger_post(%(key)s::text, %(kind)s::text, %(currency)s::text, %(order_id)s::uuid,
                   %(refund_id)s::uuid, %(dispute_id)s::text, %(invoice_id)s::uuid, %(payout_id)s::uuid,
                   %(log_id)s::bigint, %(corrects)s::text, %(accounts)b::text[], %(amounts)b::bigint[]) AS posted;

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
