-- Retrying a failed automatic refund (DESIGN.md, Round-3 clarifications): `veza-worker retry-refund`
-- and the console open a new automatic refund of the same amount for the same order or invoice;
-- the failed one stays as it was.

-- One automatic refund in flight or done per order and per invoice; failed ones do not count, so a
-- retry can be opened beside them (and a second retry cannot while the first is pending or done).
DROP INDEX IF EXISTS refunds_one_automatic_per_order;
DROP INDEX IF EXISTS refunds_one_per_invoice;
DROP INDEX IF EXISTS refunds_one_automatic_per_invoice;
CREATE UNIQUE INDEX refunds_one_automatic_per_order ON refunds (order_id) WHERE automatic AND status <> 'failed';
CREATE UNIQUE INDEX refunds_one_automatic_per_invoice ON refunds (invoice_id) WHERE automatic AND status <> 'failed';
-- An invoice's refunds, for its subscription's page and the search (the unique index on every
-- invoice refund is gone).
CREATE INDEX IF NOT EXISTS refunds_invoice_idx ON refunds (invoice_id) WHERE invoice_id IS NOT NULL;

-- A retry names the automatic refund whose money it gives back: the first one of its order or
-- invoice, whose `kept` posting put that money in platform:suspense. The retry posts no `kept` of
-- its own (the money was captured once); its success drains the suspense the first one filled.
ALTER TABLE refunds ADD COLUMN retry_of uuid REFERENCES refunds (id);
CREATE INDEX refunds_retry_of_idx ON refunds (retry_of) WHERE retry_of IS NOT NULL;

-- The console's payout pages (DESIGN.md, "The ops console"): a payout's discrepancies, a seller's
-- holds, open and closed.
CREATE INDEX discrepancies_payout_idx ON discrepancies (payout_id) WHERE payout_id IS NOT NULL;
CREATE INDEX seller_payout_holds_seller_idx ON seller_payout_holds (seller_id, held_at);
