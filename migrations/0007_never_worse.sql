-- The reconciler and the worker never make things worse (DESIGN.md, Round 2).

-- "Stuck" for an order counts from its payment's creation (confirm-order sets it); where it is
-- NULL (older rows, or a host app that wrote payment_id itself) the order's created_at counts.
ALTER TABLE orders ADD COLUMN payment_created_at timestamptz;
DROP INDEX orders_stuck_idx;
CREATE INDEX orders_stuck_idx ON orders ((coalesce(payment_created_at, created_at)))
    WHERE status = 'pending' AND payment_id IS NOT NULL;

-- Any event_id length is storable: a btree entry is capped near 2.7 kB, a hash index stores a
-- 4-byte hash whatever the key's size (equality is all the dedupe asks of it).
DROP INDEX webhook_log_event_idx;
CREATE INDEX webhook_log_event_idx ON hyperswitch_webhook_log USING hash (event_id)
    WHERE event_id IS NOT NULL;

-- Automatic refunds (money we must not keep) are marked as such: the refund outbox sends them,
-- their success moves no order, and an order gets at most one.
ALTER TABLE refunds ADD COLUMN automatic boolean NOT NULL DEFAULT false;
UPDATE refunds SET automatic = true WHERE requested_by IS NULL AND note LIKE 'automatic:%';
CREATE UNIQUE INDEX refunds_one_automatic_per_order ON refunds (order_id) WHERE automatic;
DROP INDEX refunds_unsent_automatic_idx;
CREATE INDEX refunds_unsent_automatic_idx ON refunds (created_at)
    WHERE status = 'pending' AND submitted_at IS NULL AND automatic;
-- The orphan phase leaves automatic refunds to the outbox (it sends them; it never fails them).
DROP INDEX refunds_orphan_idx;
CREATE INDEX refunds_orphan_idx ON refunds (created_at)
    WHERE status = 'pending' AND submitted_at IS NULL AND NOT automatic;
-- An automatic refund makes the order's status no promise: a failed order's refund does not
-- stop a later one, so it is outside the one-in-flight rule.
DROP INDEX refunds_one_pending_per_order;
CREATE UNIQUE INDEX refunds_one_pending_per_order ON refunds (order_id)
    WHERE status = 'pending' AND NOT automatic;

-- A row whose reconciliation raises in our code, or whose synthetic delivery ends `error:`, is
-- not retried every tick forever: after a few tries it waits for a human.
ALTER TABLE reconcile_state
    ADD COLUMN failures integer NOT NULL DEFAULT 0,
    ADD COLUMN gave_up_at timestamptz;
