-- our_payments --
-- What we hold for one page of the PSP's payments, in one statement: each payment id's order or
-- invoice (orders.payment_id and subscription_invoices.payment_id are UNIQUE: one probe each),
-- whether its money was already given back automatically (asked only of a failed one), and
-- whether its post-capture cancel was applied (its refund row, keyed `<payment_id>:cancelled_post_capture`).
SELECT p.payment_id,
       o.id AS order_id,
       i.id AS invoice_id,
       coalesce(o.status, i.status) AS status,
       coalesce(o.total_amount, i.amount) AS amount,
       coalesce(o.currency, i.currency) AS currency,
       EXISTS (SELECT 1 FROM refunds r
                WHERE r.hyperswitch_refund_id = p.payment_id || ':cancelled_post_capture')
       AS cancelled_after_capture,
       CASE WHEN coalesce(o.status, i.status) = 'failed' THEN
            EXISTS (SELECT 1 FROM refunds r WHERE r.automatic AND r.order_id = o.id)
            OR EXISTS (SELECT 1 FROM refunds r WHERE r.automatic AND r.invoice_id = i.id)
       ELSE false END AS refunded_automatically
  FROM unnest(%(ids)s::text[]) AS p(payment_id)
  LEFT JOIN orders o ON o.payment_id = p.payment_id
  LEFT JOIN subscription_invoices i ON i.payment_id = p.payment_id;

-- our_refunds --
-- What we hold for one page of the PSP's refunds: the refund by its PSP id (UNIQUE), else
-- whether its payment is one of ours (an order's or an invoice's).
SELECT r.refund_id AS psp_refund_id,
       f.id AS refund_id,
       f.status,
       f.amount,
       f.currency,
       coalesce(f.order_id, o.id) AS order_id,
       coalesce(f.invoice_id, i.id) AS invoice_id,
       coalesce(f.automatic, false) AS automatic
  FROM unnest(%(ids)s::text[], %(payment_ids)s::text[]) AS r(refund_id, payment_id)
  LEFT JOIN refunds f ON f.hyperswitch_refund_id = r.refund_id
  LEFT JOIN orders o ON f.id IS NULL AND o.payment_id = r.payment_id
  LEFT JOIN subscription_invoices i ON f.id IS NULL AND i.payment_id = r.payment_id;
