-- The ledger's one write, as a database function: ledger.post (veza_worker/ledger.py) calls it.
--
-- Before this, a posting was one statement of four CTEs, and behind a pooler in transaction
-- pooling our statements are not prepared (veza_worker/db.py), so Postgres parsed and planned it
-- again for every posting: 0.29 ms of planning a call in bench/worker, more than its execution. A
-- PL/pgSQL function keeps the plans of its statements for the life of the server connection,
-- whichever client the pooler hands that connection to, so a posting is now planned once per
-- connection. Measured with 16 connections posting at once (docs/benchmarks.md, "The ledger on
-- the hot path"): 0.95 → 0.65 ms of Postgres CPU a posting.
--
-- What it writes is what the statement wrote: the transaction under its idempotency key (a second
-- post of the same key writes nothing and returns false), its entries, and the sellers' read
-- model grown by them, locked in (seller_id, currency) order, the one order every balance writer
-- keeps. The checks stay where they were, on the tables, whoever writes: the deferred balance
-- trigger, the same-writer trigger, append-only.
CREATE FUNCTION ledger_post(
    p_key text, p_kind text, p_currency text,
    p_order_id uuid, p_refund_id uuid, p_dispute_id text, p_invoice_id uuid, p_payout_id uuid,
    p_log_id bigint, p_corrects text,
    p_accounts text[], p_amounts bigint[]
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    posted uuid;
BEGIN
    INSERT INTO ledger_transactions (key, kind, order_id, refund_id, dispute_id, invoice_id, payout_id,
                                     log_id, corrects)
    VALUES (p_key, p_kind, p_order_id, p_refund_id, p_dispute_id, p_invoice_id, p_payout_id,
            p_log_id, p_corrects)
        ON CONFLICT (key) DO NOTHING
    RETURNING id INTO posted;
    IF posted IS NULL THEN
        RETURN false;  -- this movement was posted before: a replay, a synthetic delivery, a race
    END IF;

    INSERT INTO ledger_entries (transaction_id, account, currency, amount)
    SELECT posted, e.account, p_currency, e.amount
      FROM unnest(p_accounts, p_amounts) AS e (account, amount);

    INSERT INTO seller_balances AS b (seller_id, currency, held, available, in_transit)
    SELECT split_part(e.account, ':', 2)::uuid, p_currency,
           coalesce(sum(e.amount) FILTER (WHERE e.account LIKE '%:held'), 0),
           coalesce(sum(e.amount) FILTER (WHERE e.account LIKE '%:available'), 0),
           coalesce(sum(e.amount) FILTER (WHERE e.account LIKE '%:in_transit'), 0)
      FROM unnest(p_accounts, p_amounts) AS e (account, amount)
     WHERE e.account LIKE 'seller:%'
     GROUP BY 1
     ORDER BY 1
        ON CONFLICT (seller_id, currency) DO UPDATE
       SET held = b.held + excluded.held,
           available = b.available + excluded.available,
           in_transit = b.in_transit + excluded.in_transit,
           updated_at = now();
    RETURN true;
END $$;
