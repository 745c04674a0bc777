-- Round 3, every event type (DESIGN.md "The books match the PSP's").

-- A refund made at the PSP of a subscription invoice's payment is adopted like an order's: an
-- invoice can have several refunds; only the automatic one stays unique per invoice.
DROP INDEX refunds_one_per_invoice;
CREATE UNIQUE INDEX refunds_one_automatic_per_invoice ON refunds (invoice_id) WHERE automatic;

-- The reconciler's disputes phase asks about the open disputes it checked longest ago first: a
-- GET that changes nothing still moves the dispute to the back of the line (checked_at), so every
-- open dispute is looked at within ceil(open / RECONCILE_BATCH_SIZE) ticks.
ALTER TABLE disputes ADD COLUMN checked_at timestamptz;
CREATE INDEX disputes_unchecked_idx ON disputes (checked_at NULLS FIRST, updated_at) WHERE closed_at IS NULL;
