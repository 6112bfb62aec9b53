-- The same column and index as schema/sqlite/0007_add_upload_owner.sql: who started an upload
-- session, so the number of recently active sessions per user can be bounded
-- (registry.max_active_uploads_per_user). Sessions from before this migration have no owner and
-- count for nobody. Idempotent, like every PostgreSQL migration here.
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS owner TEXT;

-- The bound counts one owner's sessions that advanced recently.
CREATE INDEX IF NOT EXISTS uploads_by_owner ON uploads (owner, updated_at);
