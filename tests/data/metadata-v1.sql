-- The podyn metadata schema as podyn_py 0.1 (commit 910fb50) created it: version 1, which kept no version.
CREATE TABLE IF NOT EXISTS podyn.tables (
    target_schema text NOT NULL,
    target_table text NOT NULL,
    source_table text NOT NULL,
    conversion_mode text NOT NULL,
    lower_case boolean NOT NULL,
    spec jsonb NOT NULL,
    state text NOT NULL DEFAULT 'created',
    total_segments integer,
    items_loaded bigint NOT NULL DEFAULT 0,
    load_started_at timestamptz,
    load_finished_at timestamptz,
    stream_arn text,
    stream_view_type text,
    replay_from timestamptz,
    changes_applied bigint NOT NULL DEFAULT 0,
    last_change_at timestamptz,
    replication_lag_seconds double precision,
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, target_table)
);
CREATE TABLE IF NOT EXISTS podyn.columns (
    target_schema text NOT NULL,
    target_table text NOT NULL,
    column_name text NOT NULL,
    attribute_name text,
    attribute_type text NOT NULL,
    variant boolean NOT NULL DEFAULT false,
    ordinal integer NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, target_table, column_name),
    UNIQUE (target_schema, target_table, attribute_name, attribute_type)
);
CREATE TABLE IF NOT EXISTS podyn.segments (
    target_schema text NOT NULL,
    target_table text NOT NULL,
    segment integer NOT NULL,
    total_segments integer NOT NULL,
    last_key jsonb,
    items_loaded bigint NOT NULL DEFAULT 0,
    done boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, target_table, segment)
);
CREATE TABLE IF NOT EXISTS podyn.shards (
    target_schema text NOT NULL,
    target_table text NOT NULL,
    stream_arn text NOT NULL,
    shard_id text NOT NULL,
    parent_shard_id text,
    sequence_number text,
    finished boolean NOT NULL DEFAULT false,
    records_applied bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, target_table, stream_arn, shard_id)
);
CREATE TABLE IF NOT EXISTS podyn.rejected (
    id bigserial PRIMARY KEY,
    target_schema text NOT NULL,
    target_table text NOT NULL,
    item_key text,
    attribute_name text,
    error text NOT NULL,
    item jsonb,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
