-- Every cent in a journal (DESIGN.md, Round 3): a double-entry ledger that Postgres itself keeps
-- balanced and append-only, seller_balances as its read model, and discrepancies as rows.

-- A movement of money: `key` is its idempotency key (order:<id>:paid, refund:<id>:succeeded…), so
-- a replay, a synthetic delivery or a race can never post one movement twice. It names the objects
-- it moves money for. `corrects` is the key of the movement a `correction` amends.
CREATE TABLE ledger_transactions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key         text NOT NULL UNIQUE,
    kind        text NOT NULL,
    order_id    uuid,
    refund_id   uuid,
    dispute_id  text,
    invoice_id  uuid,
    payout_id   uuid,
    log_id      bigint,
    corrects    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The database transaction that wrote it: entries may join it only from that transaction.
    written_by  xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX ledger_transactions_order_idx ON ledger_transactions (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX ledger_transactions_refund_idx ON ledger_transactions (refund_id) WHERE refund_id IS NOT NULL;
CREATE INDEX ledger_transactions_dispute_idx ON ledger_transactions (dispute_id) WHERE dispute_id IS NOT NULL;
CREATE INDEX ledger_transactions_invoice_idx ON ledger_transactions (invoice_id) WHERE invoice_id IS NOT NULL;
CREATE INDEX ledger_transactions_payout_idx ON ledger_transactions (payout_id) WHERE payout_id IS NOT NULL;

-- One leg of a movement. An account's balance in a currency is the sum of its entries; positive
-- means money held in that account. Accounts: world, platform:<name>, seller:<uuid>:<bucket>.
CREATE TABLE ledger_entries (
    id              bigserial PRIMARY KEY,
    -- No foreign key: ledger_check_same_writer already refuses an entry whose transaction this
    -- database transaction did not write (so one that does not exist), once per statement,
    -- where a foreign key would check each entry on the hot path again.
    transaction_id  uuid NOT NULL,
    account         text NOT NULL CHECK (account ~ '^(world|platform:[a-z_]+|seller:[0-9a-f-]{36}:(held|available|in_transit))$'),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount          bigint NOT NULL CHECK (amount <> 0)
);
CREATE INDEX ledger_entries_transaction_idx ON ledger_entries (transaction_id);
-- A seller's statement, newest first.
CREATE INDEX ledger_entries_account_idx ON ledger_entries (account, id);

-- Balanced, always: at commit, each transaction has entries that sum to zero per currency, and
-- none joined it from another database transaction (a balanced pair added to a committed
-- transaction would still be an edit). Deferred, so a transaction and its entries may be written
-- by several statements; whoever writes them, Postgres checks.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    off record;
BEGIN
    SELECT count(*) AS currencies, min(currency) FILTER (WHERE total <> 0) AS currency,
           min(total) FILTER (WHERE total <> 0) AS total
      INTO off
      FROM (SELECT currency, sum(amount) AS total
              FROM ledger_entries WHERE transaction_id = NEW.id GROUP BY currency) per_currency;
    IF off.currencies = 0 THEN
        RAISE EXCEPTION 'ledger transaction % (%) has no entries', NEW.id, NEW.key USING ERRCODE = 'check_violation';
    END IF;
    IF off.currency IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % (%) is not balanced: % % off', NEW.id, NEW.key, off.total, off.currency
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

-- Once per statement (its inserted entries as a transition table), not once per entry.
CREATE FUNCTION ledger_check_same_writer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    closed uuid;
BEGIN
    SELECT n.transaction_id INTO closed
      FROM new_entries n
      LEFT JOIN ledger_transactions t ON t.id = n.transaction_id AND t.written_by = pg_current_xact_id()
     WHERE t.id IS NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % is closed: entries join it only when it is written', closed
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_entries_same_writer AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_same_writer();

-- Append-only: a mistake is corrected by a new transaction (kind `correction`), never an edit.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused (post a correction instead)',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- seller_balances is now the ledger's read model, written only with a posting: held (inside the
-- refund window or under an open dispute), available (payable; negative = a debt), in_transit
-- (in a payout not final yet); balance = held + available, allowed below zero.
ALTER TABLE seller_balances RENAME COLUMN balance TO round2_balance;
ALTER TABLE seller_balances
    ADD COLUMN held bigint NOT NULL DEFAULT 0,
    ADD COLUMN available bigint NOT NULL DEFAULT 0,
    ADD COLUMN in_transit bigint NOT NULL DEFAULT 0;

-- One refund of ours in flight per order; a refund made at the PSP (requested_by NULL) is the PSP's
-- fact and is recorded beside it, whatever we have in flight.
DROP INDEX refunds_one_pending_per_order;
CREATE UNIQUE INDEX refunds_one_pending_per_order ON refunds (order_id)
    WHERE status = 'pending' AND NOT automatic AND requested_by IS NOT NULL;

-- An order's earnings move held → available once (the payout sweep releases them).
ALTER TABLE orders ADD COLUMN hold_released_at timestamptz;

-- Which items a dispute took from their sellers when it opened: a win gives exactly those back
-- (less any refunded meanwhile), a loss charges exactly those back; another dispute never takes
-- them again.
CREATE TABLE dispute_items (
    dispute_id     text NOT NULL REFERENCES disputes (id),
    order_item_id  uuid NOT NULL REFERENCES order_items (id),
    PRIMARY KEY (dispute_id, order_item_id)
);
CREATE INDEX dispute_items_item_idx ON dispute_items (order_item_id);

-- "Needs a human" is a row: one open row per (kind, object) at most. `subject` names an object
-- we do not hold (its PSP id); '' when the id columns say it all.
CREATE TABLE discrepancies (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    order_id     uuid,
    invoice_id   uuid,
    refund_id    uuid,
    dispute_id   text,
    payout_id    uuid,
    subject      text NOT NULL DEFAULT '',
    amount       bigint,
    currency     text,
    detail       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    resolved_by  text,
    resolution   text,
    CHECK ((resolved_at IS NULL) = (resolved_by IS NULL))
);
CREATE UNIQUE INDEX discrepancies_one_open ON discrepancies
    (kind, order_id, invoice_id, refund_id, dispute_id, payout_id, md5(subject)) NULLS NOT DISTINCT
    WHERE resolved_at IS NULL;
CREATE INDEX discrepancies_open_idx ON discrepancies (created_at) WHERE resolved_at IS NULL;

-- An automatic refund that failed before this migration was a "needs a human" row of its own.
INSERT INTO discrepancies (kind, order_id, invoice_id, refund_id, amount, currency, detail, created_at)
SELECT 'automatic_refund_failed', order_id, invoice_id, id, amount, currency,
       'automatic refund ' || hyperswitch_refund_id || ' failed: ' || coalesce(error_message, '')
       || ': money kept in suspense', coalesce(failed_at, updated_at)
  FROM refunds
 WHERE automatic AND status = 'failed';

-- Opening balances: every movement rounds 1–2 made, posted once under the key its handler would
-- use, so a late replay posts nothing and `audit` passes on a database round 2 filled.
CREATE TEMP TABLE opening (
    key text, order_id uuid, refund_id uuid, dispute_id text, invoice_id uuid,
    account text, currency text, amount bigint
) ON COMMIT DROP;

-- Orders paid: world −total, each seller's items into held; items that do not add up to the
-- total leave the rest unallocated.
INSERT INTO opening
SELECT 'order:' || o.id || ':paid', o.id, NULL, NULL, NULL, a.account, o.currency, a.amount
  FROM orders o
  CROSS JOIN LATERAL (
      SELECT 'world' AS account, -o.total_amount AS amount
      UNION ALL
      SELECT 'seller:' || i.seller_id || ':held', sum(i.amount)
        FROM order_items i WHERE i.order_id = o.id GROUP BY i.seller_id
      UNION ALL
      SELECT 'platform:unallocated', o.total_amount - coalesce(sum(i.amount), 0)
        FROM order_items i WHERE i.order_id = o.id
  ) a
 WHERE o.status IN ('completed', 'refund_pending', 'refunded', 'disputed', 'charged_back')
   AND o.total_amount > 0;

-- Refunds of orders that succeeded: world +amount, the refund's items out of their sellers' held,
-- the rest (a refund made at the PSP that matched no items) unallocated.
INSERT INTO opening
SELECT 'refund:' || r.id || ':succeeded', r.order_id, r.id, NULL, NULL, a.account, r.currency, a.amount
  FROM refunds r
  CROSS JOIN LATERAL (
      SELECT 'world' AS account, r.amount
      UNION ALL
      SELECT 'seller:' || i.seller_id || ':held', -sum(i.amount)
        FROM refund_items ri JOIN order_items i ON i.id = ri.order_item_id
       WHERE ri.refund_id = r.id GROUP BY i.seller_id
      UNION ALL
      SELECT 'platform:unallocated', coalesce(sum(i.amount), 0) - r.amount
        FROM refund_items ri JOIN order_items i ON i.id = ri.order_item_id
       WHERE ri.refund_id = r.id
  ) a
 WHERE r.status = 'succeeded' AND NOT r.automatic AND r.order_id IS NOT NULL;

-- Money kept for nothing (each automatic refund's payment) into suspense; out when refunded.
INSERT INTO opening
SELECT 'refund:' || r.id || ':kept', r.order_id, r.id, NULL, r.invoice_id, a.account, r.currency, a.amount
  FROM refunds r
  CROSS JOIN LATERAL (VALUES ('world', -r.amount), ('platform:suspense', r.amount)) a (account, amount)
 WHERE r.automatic;
INSERT INTO opening
SELECT 'refund:' || r.id || ':succeeded', r.order_id, r.id, NULL, r.invoice_id, a.account, r.currency, a.amount
  FROM refunds r
  CROSS JOIN LATERAL (VALUES ('platform:suspense', -r.amount), ('world', r.amount)) a (account, amount)
 WHERE r.automatic AND r.status = 'succeeded';

-- Paid subscription invoices: platform revenue.
INSERT INTO opening
SELECT 'invoice:' || v.id || ':paid', NULL, NULL, NULL, v.id, a.account, v.currency, a.amount
  FROM subscription_invoices v
  CROSS JOIN LATERAL (VALUES ('world', -v.amount), ('platform:revenue', v.amount)) a (account, amount)
 WHERE v.status = 'paid' AND v.amount > 0;

-- Disputes: the items an applied opening took (round 2 recorded dispute_debits; refunds were
-- refused meanwhile, so its items are the order's unrefunded ones).
INSERT INTO dispute_items (dispute_id, order_item_id)
SELECT d.id, i.id
  FROM disputes d
  JOIN order_items i ON i.order_id = d.order_id
 WHERE EXISTS (SELECT 1 FROM dispute_debits dd WHERE dd.dispute_id = d.id)
   AND NOT EXISTS (SELECT 1 FROM refund_items ri JOIN refunds r ON r.id = ri.refund_id
                    WHERE ri.order_item_id = i.id AND r.status = 'succeeded');
-- The bank took the dispute's amount: from the items' sellers, else revenue (an invoice), the
-- difference (or all of it, for an opening round 2 left to a human) unallocated.
INSERT INTO opening
SELECT 'dispute:' || d.id || ':opened', d.order_id, NULL, d.id, d.invoice_id, a.account, d.currency, a.amount
  FROM disputes d
  CROSS JOIN LATERAL (
      SELECT 'world' AS account, d.amount
      UNION ALL
      SELECT 'seller:' || i.seller_id || ':held', -sum(i.amount)
        FROM dispute_items di JOIN order_items i ON i.id = di.order_item_id
       WHERE di.dispute_id = d.id GROUP BY i.seller_id
      UNION ALL
      SELECT CASE WHEN d.invoice_id IS NULL THEN 'platform:unallocated' ELSE 'platform:revenue' END,
             coalesce(sum(i.amount), 0) - d.amount
        FROM dispute_items di JOIN order_items i ON i.id = di.order_item_id
       WHERE di.dispute_id = d.id
  ) a
 WHERE d.status <> 'none' AND (d.order_id IS NOT NULL OR d.invoice_id IS NOT NULL) AND d.amount > 0;
-- Won or cancelled: the exact reverse.
INSERT INTO opening
SELECT 'dispute:' || o.dispute_id || ':closed', o.order_id, NULL, o.dispute_id, o.invoice_id, o.account,
       o.currency, -o.amount
  FROM opening o
  JOIN disputes d ON d.id = o.dispute_id
 WHERE o.key = 'dispute:' || d.id || ':opened'
   AND d.status IN ('dispute_won', 'dispute_cancelled');

CREATE TEMP TABLE opening_entries ON COMMIT DROP AS
SELECT key, order_id, refund_id, dispute_id, invoice_id, account, currency, sum(amount) AS amount
  FROM opening
 GROUP BY key, order_id, refund_id, dispute_id, invoice_id, account, currency
HAVING sum(amount) <> 0;
INSERT INTO ledger_transactions (key, kind, order_id, refund_id, dispute_id, invoice_id)
SELECT DISTINCT key, 'opening_balance', order_id, refund_id, dispute_id, invoice_id FROM opening_entries;
INSERT INTO ledger_entries (transaction_id, account, currency, amount)
SELECT t.id, o.account, o.currency, o.amount
  FROM opening_entries o JOIN ledger_transactions t ON t.key = o.key;

-- Every opening posting to platform:unallocated is money no rule could assign: a row for a human.
INSERT INTO discrepancies (kind, order_id, invoice_id, refund_id, dispute_id, amount, currency, detail)
SELECT 'opening_unallocated', t.order_id, t.invoice_id, t.refund_id, t.dispute_id, e.amount, e.currency,
       'before the ledger, ' || t.key || ' moved ' || e.amount || ' ' || e.currency
       || ' that no rule could assign to a seller or the platform'
  FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
 WHERE e.account = 'platform:unallocated'
    ON CONFLICT DO NOTHING;

-- The read model, rebuilt from the ledger. A seller whose round-2 balance differs (a debit clamped
-- at zero forgot a debt, or the balance was paid out and lowered outside veza-worker) gets a row
-- for a human, who records what really happened as a correction.
CREATE TEMP TABLE opening_balances ON COMMIT DROP AS
SELECT split_part(e.account, ':', 2)::uuid AS seller_id, e.currency, sum(e.amount) AS held
  FROM ledger_entries e
 WHERE e.account LIKE 'seller:%:held'
 GROUP BY 1, 2;
INSERT INTO discrepancies (kind, subject, amount, currency, detail)
SELECT 'opening_balance_difference', 'seller:' || coalesce(n.seller_id, b.seller_id),
       coalesce(n.held, 0) - coalesce(b.round2_balance, 0), coalesce(n.currency, b.currency),
       'seller ' || coalesce(n.seller_id, b.seller_id) || ': the ledger holds ' || coalesce(n.held, 0) || ' '
       || coalesce(n.currency, b.currency) || ' where round 2 showed ' || coalesce(b.round2_balance, 0)
       || ' (a debt a clamp at zero forgot, or money paid out outside veza-worker)'
  FROM opening_balances n
  FULL JOIN seller_balances b ON b.seller_id = n.seller_id AND b.currency = n.currency
 WHERE coalesce(n.held, 0) <> coalesce(b.round2_balance, 0);
INSERT INTO seller_balances AS b (seller_id, currency, round2_balance, held)
SELECT seller_id, currency, 0, held FROM opening_balances
    ON CONFLICT (seller_id, currency) DO UPDATE SET held = excluded.held, updated_at = now();
ALTER TABLE seller_balances
    DROP COLUMN round2_balance,
    ADD COLUMN balance bigint GENERATED ALWAYS AS (held + available) STORED;
