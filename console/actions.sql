-- record_action --
-- Who did what to which object, and why: written with the action, in its transaction when it has one.
INSERT INTO ops_actions (username, action, object_kind, object_id, note)
VALUES (%(username)s, %(action)s, %(object_kind)s, %(object_id)s, %(note)s)
RETURNING id;

-- actions_on --
-- The actions taken on one object, newest first (ops_actions_object_idx).
SELECT id, at, username, action, note
  FROM ops_actions
 WHERE object_kind = %(object_kind)s AND object_id = %(object_id)s
 ORDER BY at DESC
 LIMIT 50;
