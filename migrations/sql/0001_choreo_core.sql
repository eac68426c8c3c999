-- choreo's own tables. Applied by choreo::postgres::migrate (embedded with sqlx::migrate!).
-- Never edit a migration once applied: sqlx checksums them. Add a new file instead.
--
-- The schema is choreo_meta, not choreo: Postgres' default search_path starts with "$user",
-- and a role named choreo (the dev database's) would then put unqualified tables, sqlx's
-- own _sqlx_migrations among them, into our schema.

CREATE SCHEMA IF NOT EXISTS choreo_meta;

-- One row per projection (name + version): where its live view lives.
CREATE TABLE choreo_meta.projections (
    projection   text PRIMARY KEY,          -- '{name}.v{version}'
    name         text NOT NULL,
    version      integer NOT NULL,
    live_schema  text NOT NULL,              -- '{name}_v{version}'
    rebuilt_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The next offset to apply (last applied + 1) per projection, slot and partition.
-- slot 'live' is what the running view reflects; slot 'shadow' belongs to a rebuild in
-- progress. A batch compares-and-sets its row on the offset it expects, in the same
-- transaction as its effects: that is the fence against zombies and double application.
CREATE TABLE choreo_meta.checkpoints (
    projection   text NOT NULL,
    slot         text NOT NULL CHECK (slot IN ('live', 'shadow')),
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, slot, topic, partition)
);

-- A rebuild in progress (at most one per projection, also guarded by an advisory lock).
CREATE TABLE choreo_meta.rebuilds (
    projection    text PRIMARY KEY,
    shadow_schema text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now()
);

-- Records a consumer skipped into its dead-letter topic, written in the same transaction as
-- the checkpoint that moves past them.
CREATE TABLE choreo_meta.dead_letters (
    id           bigserial PRIMARY KEY,
    consumer     text NOT NULL,              -- consumer group / projection
    topic        text NOT NULL,
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    event_id     text,
    event_type   text,
    error        text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, topic, partition, "offset")
);

-- Reactors: an outside effect done for an event (at-least-once effect + idempotency key).
CREATE TABLE choreo_meta.inbox (
    consumer     text NOT NULL,
    event_id     uuid NOT NULL,
    handled_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
