-- Who started an upload session, so the number of recently active sessions per user can be
-- bounded (registry.max_active_uploads_per_user). Sessions from before this migration have no
-- owner and count for nobody.
ALTER TABLE uploads ADD COLUMN owner TEXT;

-- The bound counts one owner's sessions that advanced recently.
CREATE INDEX uploads_by_owner ON uploads (owner, updated_at);
