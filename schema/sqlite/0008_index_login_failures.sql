-- Login throttle counters are pruned once their window has passed (service::auth, a bounded
-- DELETE on the login path), oldest first: the prune finds them through this index instead of
-- scanning every counter.
CREATE INDEX IF NOT EXISTS login_failures_by_window_start ON login_failures (window_start);
