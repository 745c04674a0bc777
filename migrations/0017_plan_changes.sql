-- Plan changes (DESIGN.md, Round 3 → Plan changes): an upgrade charges the prorated difference
-- now and switches the plan once paid; a downgrade waits for the renewal in pending_plan_id.

-- What an invoice is for: a subscription's first payment (it starts a period when paid), the
-- renewal of a period (dunning and recovery attempts too), or the prorated price of an upgrade
-- (it switches the plan when paid; the period does not move).
ALTER TABLE subscription_invoices
    ADD COLUMN kind     text NOT NULL DEFAULT 'first' CHECK (kind IN ('first', 'renewal', 'proration')),
    ADD COLUMN plan_id  uuid REFERENCES subscription_plans (id);  -- the plan it pays for
-- Existing rows: a first payment is the subscription's earliest invoice (or one still without a
-- period); every later one renewed a period. Each pays for the plan its subscription is on.
UPDATE subscription_invoices i
   SET kind = CASE WHEN i.period_start IS NOT NULL
                    AND EXISTS (SELECT 1 FROM subscription_invoices e
                                 WHERE e.subscription_id = i.subscription_id
                                   AND (e.created_at, e.id) < (i.created_at, i.id))
                   THEN 'renewal' ELSE 'first' END,
       plan_id = s.plan_id
  FROM user_subscriptions s
 WHERE s.id = i.subscription_id;

-- A downgrade, an interval change or paid → free: the plan the next renewal bills.
ALTER TABLE user_subscriptions
    ADD COLUMN pending_plan_id uuid REFERENCES subscription_plans (id);
