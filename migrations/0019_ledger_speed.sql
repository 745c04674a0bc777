-- The ledger's checks at the cost of an index probe, whatever the planner's statistics say.
--
-- A trigger function's queries are planned once per connection and the plan kept. A worker's
-- connection that first posts while the ledger is nearly empty (a new database, or tables that
-- autovacuum has not analyzed since they grew) planned a sequential scan, and kept it: in
-- bench/worker each check read the whole ledger, 0.30 ms for the balance check and 0.16 ms for
-- the closed-transaction check per posting by the end of 10,000 (pg_stat_user_functions), against
-- 0.01 ms for an index probe. So each check looks its rows up by index only (enable_seqscan off
-- for the function's own queries), and the closed-transaction check probes ledger_transactions
-- once per new entry (a subquery per row: never a join that could read the whole table). What the
-- checks refuse is unchanged.

-- The balance check's query is unchanged: only how it is planned.
ALTER FUNCTION ledger_check_balanced() SET enable_seqscan = off;

CREATE OR REPLACE FUNCTION ledger_check_same_writer() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    closed uuid := (SELECT n.transaction_id
                      FROM new_entries n
                     WHERE (SELECT t.written_by FROM ledger_transactions t WHERE t.id = n.transaction_id)
                           IS DISTINCT FROM pg_current_xact_id()
                     LIMIT 1);
BEGIN
    IF closed IS NULL THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'ledger transaction % is closed: entries join it only when it is written', closed
        USING ERRCODE = 'check_violation';
END $$;
