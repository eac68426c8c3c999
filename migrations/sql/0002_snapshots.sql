-- Aggregate snapshots: per command processor (its events topic) and partition, the latest
-- fold of every aggregate of that partition, and the events offset to continue reading from.
CREATE TABLE choreo_meta.snapshots (
    events_topic   text        NOT NULL,
    partition      integer     NOT NULL,
    -- choreo's snapshot format, and the aggregate state's version as the service declares it:
    -- a snapshot with another value of either is ignored (a full restore from the log).
    format         integer     NOT NULL,
    state_version  integer     NOT NULL,
    -- Reading events[partition] from this offset continues the snapshot.
    events_offset  bigint      NOT NULL,
    aggregates     integer     NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    body           bytea       NOT NULL,
    PRIMARY KEY (events_topic, partition)
);
