-- Subscriptions that renew, fail, recover and end (DESIGN.md, Round 2).

-- past_due: a renewal payment failed; it grants nothing, and it is still the user's one live
-- subscription (they owe the period), so the "one live" index covers it too.
ALTER TABLE user_subscriptions DROP CONSTRAINT user_subscriptions_status_check;
ALTER TABLE user_subscriptions ADD CONSTRAINT user_subscriptions_status_check
    CHECK (status IN ('active', 'trialing', 'pending_payment', 'past_due', 'expired', 'canceled'));
DROP INDEX user_subscriptions_one_live;
CREATE UNIQUE INDEX user_subscriptions_one_live ON user_subscriptions (user_id)
    WHERE status IN ('active', 'trialing', 'pending_payment', 'past_due');

ALTER TABLE user_subscriptions
    ADD COLUMN payment_method_id     text,          -- saved by a paid first payment: renewals charge it
    ADD COLUMN cancel_at_period_end  boolean NOT NULL DEFAULT false,
    ADD COLUMN canceled_at           timestamptz,
    ADD COLUMN past_due_since        timestamptz,   -- the period's first failed renewal: dunning counts from it
    ADD COLUMN dunning_step          integer NOT NULL DEFAULT 0;  -- retries made since past_due_since

-- The renew sweep: active subscriptions whose period has ended (cost = the due rows, not the table).
CREATE INDEX user_subscriptions_renewal_idx ON user_subscriptions (current_period_end)
    WHERE status = 'active';
-- Dunning: past_due subscriptions, oldest failure first.
CREATE INDEX user_subscriptions_past_due_idx ON user_subscriptions (past_due_since)
    WHERE status = 'past_due';
-- mandate_revoked finds the subscriptions charging a payment method.
CREATE INDEX user_subscriptions_payment_method_idx ON user_subscriptions (payment_method_id)
    WHERE payment_method_id IS NOT NULL;

-- Each PSP payment is one invoice: a retry for the same period is a new row, attempt + 1.
-- A first payment's period is set when it is paid; a renewal's when it is created.
ALTER TABLE subscription_invoices
    ADD COLUMN period_start  timestamptz,
    ADD COLUMN period_end    timestamptz,
    ADD COLUMN attempt       integer NOT NULL DEFAULT 1,
    ADD COLUMN off_session   boolean NOT NULL DEFAULT false,  -- charged with the saved method, no customer
    ADD COLUMN submitted_at  timestamptz;                     -- the PSP answered the create
-- Never two renewal charges for one period and attempt, whatever two sweeps race.
CREATE UNIQUE INDEX subscription_invoices_one_per_attempt
    ON subscription_invoices (subscription_id, period_start, attempt)
    WHERE period_start IS NOT NULL;
-- The reconciler and the unsent-invoice sweep: pending invoices, oldest first.
CREATE INDEX subscription_invoices_pending_idx ON subscription_invoices (created_at)
    WHERE status = 'pending';

-- The reconciler now tracks invoices (a subscription has many over its life).
ALTER TABLE reconcile_state DROP CONSTRAINT reconcile_state_kind_check;
ALTER TABLE reconcile_state ADD CONSTRAINT reconcile_state_kind_check
    CHECK (kind IN ('order', 'refund', 'subscription', 'invoice'));

-- Refunds for invoices too (a payment that succeeded for an invoice we no longer want), and
-- refunds nobody asked for by name (automatic ones): exactly one of order_id / invoice_id.
ALTER TABLE refunds
    ALTER COLUMN order_id DROP NOT NULL,
    ALTER COLUMN requested_by DROP NOT NULL,
    ADD COLUMN invoice_id uuid REFERENCES subscription_invoices (id),
    ADD CONSTRAINT refunds_one_owner CHECK ((order_id IS NULL) <> (invoice_id IS NULL));
-- An invoice's payment is refunded once, whole, however often its late success is replayed.
CREATE UNIQUE INDEX refunds_one_per_invoice ON refunds (invoice_id) WHERE invoice_id IS NOT NULL;
-- Automatic refunds (requested_by NULL) wait here until the refund outbox sends them.
CREATE INDEX refunds_unsent_automatic_idx ON refunds (created_at)
    WHERE status = 'pending' AND submitted_at IS NULL AND requested_by IS NULL;
-- Rows from before this migration whose payment was created: they are sent.
UPDATE subscription_invoices SET submitted_at = created_at WHERE client_secret IS NOT NULL;
