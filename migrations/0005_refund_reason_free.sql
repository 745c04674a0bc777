-- The refund reason is checked where it is chosen (the CLI and refunds.open_refund: duplicate,
-- fraudulent, requested_by_customer, what Stripe accepts). A CHECK here would also refuse rows
-- written by other tools with their own wording, and the column is free text in the Contract.
ALTER TABLE refunds DROP CONSTRAINT refunds_reason_check;
