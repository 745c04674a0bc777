-- When a clock first started (issue 19): a sweep that never ran is overdue two intervals after
-- that, not at once; before any clock has started nothing is overdue yet (an alert on the
-- absent metric covers a clock that never starts).

-- One row at most: the boolean key can only be true.
CREATE TABLE clock_start (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    first_started_at timestamptz NOT NULL DEFAULT now()
);
