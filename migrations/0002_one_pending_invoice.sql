-- A subscription has at most one invoice awaiting payment, whatever races the trial-end sweep or
-- the CLI: a second one would be a second charge.
CREATE UNIQUE INDEX subscription_invoices_one_pending ON subscription_invoices (subscription_id)
    WHERE status = 'pending';
