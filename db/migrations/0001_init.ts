import { type Kysely, sql } from 'kysely';

// Forward-only: there is no down(). A released migration is never edited; a change is a new file.
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE TABLE tasks (
      id uuid PRIMARY KEY,
      type text NOT NULL,
      payload jsonb NOT NULL,
      status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'succeeded', 'failed', 'cancelled')),
      current_step text,
      progress real CHECK (progress BETWEEN 0 AND 1),
      result jsonb,
      error jsonb,
      attempts integer NOT NULL DEFAULT 0,
      max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
      external_job_id text,
      owner text NOT NULL,
      idempotency_key text,
      request_hash text,
      correlation_id text,
      lease_until timestamptz,
      cancel_requested_at timestamptz,
      created_at timestamptz NOT NULL DEFAULT now(),
      updated_at timestamptz NOT NULL DEFAULT now(),
      started_at timestamptz,
      finished_at timestamptz
    )`.execute(db);
  await sql`CREATE UNIQUE INDEX tasks_owner_idempotency_key ON tasks (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL`.execute(db);
  // Keyset listing per owner, newest first.
  await sql`CREATE INDEX tasks_owner_created ON tasks (owner, created_at DESC, id DESC)`.execute(db);
  // The worker's sweeper looks only at running tasks whose lease ran out.
  await sql`CREATE INDEX tasks_processing_lease ON tasks (lease_until) WHERE status = 'processing'`.execute(db);

  await sql`
    CREATE TABLE task_attempts (
      task_id uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
      attempt integer NOT NULL,
      external_job_id text NOT NULL,
      started_at timestamptz NOT NULL DEFAULT now(),
      finished_at timestamptz,
      outcome text CHECK (outcome IN ('succeeded', 'failed', 'cancelled', 'lost')),
      error jsonb,
      PRIMARY KEY (task_id, attempt)
    )`.execute(db);

  await sql`
    CREATE TABLE outbox (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      message_id uuid NOT NULL UNIQUE,
      task_id uuid NOT NULL,
      routing_key text NOT NULL,
      payload jsonb NOT NULL,
      headers jsonb NOT NULL DEFAULT '{}',
      available_at timestamptz NOT NULL DEFAULT now(),
      locked_until timestamptz,
      created_at timestamptz NOT NULL DEFAULT now(),
      published_at timestamptz,
      publish_attempts integer NOT NULL DEFAULT 0,
      last_error text
    )`.execute(db);
  // The relay's claim reads only this index; it stays small because published rows leave it.
  await sql`CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL`.execute(db);
  await sql`CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL`.execute(db);
  await sql`CREATE INDEX outbox_task_id ON outbox (task_id)`.execute(db);
}
