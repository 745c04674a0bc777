-- start_run --
INSERT INTO sweep_runs (name) VALUES (%(name)s) RETURNING id;

-- finish_run --
UPDATE sweep_runs
   SET finished_at = now(), counts = %(counts)s, error = %(error)s
 WHERE id = %(id)s;

-- prune_runs --
DELETE FROM sweep_runs WHERE started_at < now() - interval '30 days';

-- last_successes --
-- Each sweep's last successful run (sweep_runs_success_idx: one index probe per sweep).
SELECT n.name, (SELECT max(finished_at) FROM sweep_runs r
                 WHERE r.name = n.name AND r.error IS NULL AND r.finished_at IS NOT NULL) AS last_success
  FROM unnest(%(names)s::text[]) AS n(name);

-- record_clock_start --
-- The first start is kept: a restart, or a second clock, changes nothing.
INSERT INTO clock_start DEFAULT VALUES ON CONFLICT (id) DO NOTHING;

-- clock_started_at --
SELECT first_started_at FROM clock_start;
