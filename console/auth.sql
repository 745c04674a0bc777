-- locked_until --
-- The pair's lock, while it holds.
SELECT locked_until
  FROM ops_login_failures
 WHERE username = %(username)s AND address = %(address)s AND locked_until > now();

-- record_failure --
-- One more failure for the pair: a failure outside the window starts a new count; the one that
-- reaches the maximum locks the pair. Returns the lock, if this failure set it.
INSERT INTO ops_login_failures AS f (username, address, failures, first_at)
VALUES (%(username)s, %(address)s, 1, now())
    ON CONFLICT (username, address) DO UPDATE
   SET failures = CASE WHEN f.first_at > now() - %(window)s THEN f.failures + 1 ELSE 1 END,
       first_at = CASE WHEN f.first_at > now() - %(window)s THEN f.first_at ELSE now() END,
       locked_until = CASE WHEN f.first_at > now() - %(window)s AND f.failures + 1 >= %(max)s
                           THEN now() + %(lockout)s END
RETURNING locked_until;

-- prune_failures --
-- Pairs nobody has failed for a day and that are not locked (ops_login_failures_first_idx).
DELETE FROM ops_login_failures
 WHERE first_at < now() - interval '1 day' AND (locked_until IS NULL OR locked_until < now());

-- clear_failures --
DELETE FROM ops_login_failures WHERE username = %(username)s AND address = %(address)s;
