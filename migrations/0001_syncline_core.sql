-- Syncline core schema: the positioned change log, collections, topics, retention.
--
-- Positions are commit-ordered (design.md, invariant 1): when a position is visible, every smaller
-- position is visible or will never exist. Capture happens in two deferred phases:
--   phase 1: a deferred constraint trigger per tracked table stages the rendered row image in an
--            unlogged staging table, taking no lock;
--   phase 2: a deferred constraint trigger on the staging table, queued behind every other deferred
--            check of the transaction, takes a transaction-level advisory lock, moves the staged rows
--            into the change log with nextval() and sends one NOTIFY. The lock is released only after
--            the commit is visible, so positions become visible in order.

CREATE SCHEMA IF NOT EXISTS syncline;

-- Key/value facts about this database: the cursor epoch, written once at migrate time.
CREATE TABLE syncline.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO syncline.meta (key, value)
VALUES ('epoch', substr(md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text), 1, 16));

-- CACHE 1 is essential: a per-backend cache hands out numbers out of commit order.
CREATE SEQUENCE syncline.position_seq AS bigint CACHE 1;

-- Registered collections. Only names registered here are usable by clients; identifiers coming
-- from clients are matched against these arrays and never spliced into SQL text.
CREATE TABLE syncline.collections (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$'),
    relation    regclass NOT NULL UNIQUE,
    key_columns text[] NOT NULL CHECK (cardinality(key_columns) > 0),
    filterable  text[] NOT NULL DEFAULT '{}',
    published   text[] NOT NULL,
    -- policy(filter jsonb) returns boolean, run with the token's claims in request.jwt.claims;
    -- NULL means any authenticated user may read every feed of the collection.
    policy      regprocedure
);

-- Client installs. A client_id belongs to the first `sub` that used it; `last_mid` is the highest
-- mutation id of that client already decided (never pruned).
CREATE TABLE syncline.clients (
    client_id  text PRIMARY KEY CHECK (client_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    sub        text NOT NULL,
    last_mid   bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);

-- Topic authorization: policy(topic text) returns boolean, run with the token's claims in
-- request.jwt.claims. Default deny: with no row here, no topic can be subscribed.
CREATE TABLE syncline.topic_policies (
    id      int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    policy  regprocedure NOT NULL
);

-- Transaction-local staging of rendered row images (phase 1). Unlogged: rows live only inside the
-- transaction that stages them; phase 2 moves them out before commit.
CREATE UNLOGGED TABLE syncline.staging (
    txid       xid8   NOT NULL,
    seq        bigserial,
    collection text,
    topic      text,
    op         "char" NOT NULL,   -- i u d t(runcate) m(essage)
    key        jsonb,
    old_key    jsonb,
    row_image  jsonb,
    new_match  jsonb,
    old_match  jsonb,
    PRIMARY KEY (txid, seq)
);

-- The change log. One row per captured change, positions contiguous within a transaction.
CREATE TABLE syncline.changes (
    pos        bigint PRIMARY KEY,
    txid       xid8   NOT NULL,
    collection text,
    topic      text,
    op         "char" NOT NULL,
    key        jsonb,
    old_key    jsonb,
    row_image  jsonb,
    new_match  jsonb,
    old_match  jsonb,
    committed_at timestamptz NOT NULL DEFAULT now()
);

-- Retention horizon: every position <= pruned_through may be gone. Read in the same statement
-- (so the same snapshot) as each catch-up page: a concurrent prune becomes a reset, never a gap.
CREATE TABLE syncline.retention (
    id             int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    pruned_through bigint NOT NULL DEFAULT 0
);
INSERT INTO syncline.retention DEFAULT VALUES;

-- Phase 1: stage the row image of one tracked-table change. Fixed rendering settings so capture,
-- snapshots and filter canonicalisation agree byte for byte.
CREATE FUNCTION syncline.capture_row() RETURNS trigger
LANGUAGE plpgsql
SET "TimeZone" = 'UTC' SET "DateStyle" = 'ISO, YMD' SET extra_float_digits = 3 SET "IntervalStyle" = 'iso_8601'
AS $$
DECLARE
    c syncline.collections;
    new_j jsonb;
    old_j jsonb;
    v_key jsonb;
    v_old_key jsonb;
    v_row jsonb;
    v_new_match jsonb;
    v_old_match jsonb;
BEGIN
    SELECT * INTO c FROM syncline.collections WHERE relation = TG_RELID;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_j := to_jsonb(NEW);
        SELECT jsonb_object_agg(k, new_j -> k) INTO v_key FROM unnest(c.key_columns) AS k;
        SELECT coalesce(jsonb_object_agg(k, new_j -> k), '{}') INTO v_row FROM unnest(c.published) AS k;
        SELECT coalesce(jsonb_object_agg(k, new_j -> k), '{}') INTO v_new_match FROM unnest(c.filterable) AS k;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_j := to_jsonb(OLD);
        SELECT jsonb_object_agg(k, old_j -> k) INTO v_old_key FROM unnest(c.key_columns) AS k;
        SELECT coalesce(jsonb_object_agg(k, old_j -> k), '{}') INTO v_old_match FROM unnest(c.filterable) AS k;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF v_row IS NOT DISTINCT FROM (SELECT coalesce(jsonb_object_agg(k, old_j -> k), '{}') FROM unnest(c.published) AS k)
           AND v_key = v_old_key AND v_new_match = v_old_match THEN
            RETURN NULL;  -- nothing a subscriber can see changed
        END IF;
        IF v_key = v_old_key THEN
            v_old_key := NULL;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        v_key := v_old_key;
        v_old_key := NULL;
    END IF;
    PERFORM set_config('syncline.flushed', '', true);
    INSERT INTO syncline.staging (txid, collection, op, key, old_key, row_image, new_match, old_match)
    VALUES (pg_current_xact_id(), c.name, lower(left(TG_OP, 1))::"char", v_key, v_old_key, v_row, v_new_match, v_old_match);
    RETURN NULL;
END;
$$;

-- TRUNCATE bypasses row triggers: capture it as one 't' change that restarts the collection's feeds.
CREATE FUNCTION syncline.capture_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_name text;
BEGIN
    SELECT name INTO v_name FROM syncline.collections WHERE relation = TG_RELID;
    IF FOUND THEN
        PERFORM set_config('syncline.flushed', '', true);
        INSERT INTO syncline.staging (txid, collection, op) VALUES (pg_current_xact_id(), v_name, 't');
    END IF;
    RETURN NULL;
END;
$$;

-- Phase 2: once per transaction (a transaction-local flag), after every other deferred check.
-- Phase 1 clears the flag whenever it stages a row, so SET CONSTRAINTS ... IMMEDIATE followed by
-- more writes still flushes everything.
CREATE FUNCTION syncline.flush_staging() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    me xid8 := pg_current_xact_id();
BEGIN
    IF current_setting('syncline.flushed', true) = 'done' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(7331533711);
    INSERT INTO syncline.changes (pos, txid, collection, topic, op, key, old_key, row_image, new_match, old_match)
    SELECT nextval('syncline.position_seq'), s.txid, s.collection, s.topic, s.op, s.key, s.old_key,
           s.row_image, s.new_match, s.old_match
    FROM (SELECT * FROM syncline.staging WHERE txid = me ORDER BY seq) AS s;
    DELETE FROM syncline.staging WHERE txid = me;
    -- Identical payload within a transaction: Postgres folds it to one notification.
    NOTIFY syncline_wake;
    PERFORM set_config('syncline.flushed', 'done', true);
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER flush_staging
AFTER INSERT ON syncline.staging
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION syncline.flush_staging();

-- Register a table as a collection and install capture. Columns are validated against the catalog.
CREATE FUNCTION syncline.track(
    relation    regclass,
    key_columns text[],
    filterable  text[] DEFAULT '{}',
    published   text[] DEFAULT NULL,
    policy      regprocedure DEFAULT NULL,
    name        text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_name text := coalesce(name, (SELECT c.relname FROM pg_class c WHERE c.oid = relation));
    v_cols text[];
    v_bad text;
    v_published text[];
BEGIN
    SELECT array_agg(attname::text ORDER BY attnum) INTO v_cols
    FROM pg_attribute WHERE attrelid = relation AND attnum > 0 AND NOT attisdropped;
    v_published := coalesce(published, v_cols);
    SELECT c INTO v_bad FROM unnest(key_columns || filterable || v_published) AS c WHERE c <> ALL (v_cols) LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'syncline.track: % has no column %', relation, v_bad;
    END IF;
    SELECT a.attname INTO v_bad FROM pg_attribute a
    WHERE a.attrelid = relation AND a.attname = ANY (filterable)
      AND a.atttypid NOT IN ('text'::regtype, 'varchar'::regtype, 'int2'::regtype, 'int4'::regtype,
                             'int8'::regtype, 'uuid'::regtype, 'bool'::regtype, 'date'::regtype)
    LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'syncline.track: filterable column % must be text, integer, uuid, boolean or date', v_bad;
    END IF;
    INSERT INTO syncline.collections (name, relation, key_columns, filterable, published, policy)
    VALUES (v_name, relation, key_columns, filterable, v_published, policy)
    ON CONFLICT ON CONSTRAINT collections_pkey DO UPDATE
    SET relation = EXCLUDED.relation, key_columns = EXCLUDED.key_columns, filterable = EXCLUDED.filterable,
        published = EXCLUDED.published, policy = EXCLUDED.policy;
    EXECUTE format('DROP TRIGGER IF EXISTS syncline_capture ON %s', relation);
    EXECUTE format('DROP TRIGGER IF EXISTS syncline_capture_truncate ON %s', relation);
    EXECUTE format('CREATE CONSTRAINT TRIGGER syncline_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION syncline.capture_row()', relation);
    EXECUTE format('CREATE TRIGGER syncline_capture_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION syncline.capture_truncate()', relation);
    -- Capture also under session_replication_role = replica (logical replication apply, pg_restore).
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER syncline_capture', relation);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER syncline_capture_truncate', relation);
END;
$$;

CREATE FUNCTION syncline.untrack(relation regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS syncline_capture ON %s', relation);
    EXECUTE format('DROP TRIGGER IF EXISTS syncline_capture_truncate ON %s', relation);
    DELETE FROM syncline.collections c WHERE c.relation = untrack.relation;
END;
$$;

-- Publish a notification on a topic, delivered through the same positioned log at commit.
CREATE FUNCTION syncline.publish(topic text, payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF topic IS NULL OR length(topic) = 0 OR length(topic) > 200 THEN
        RAISE EXCEPTION 'syncline.publish: topic must be 1-200 characters';
    END IF;
    PERFORM set_config('syncline.flushed', '', true);
    INSERT INTO syncline.staging (txid, topic, op, row_image) VALUES (pg_current_xact_id(), topic, 'm', payload);
END;
$$;

-- The newest position visible in the caller's snapshot (never below the prune horizon).
CREATE FUNCTION syncline.head() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT greatest((SELECT max(pos) FROM syncline.changes), (SELECT pruned_through FROM syncline.retention), 0)
$$;

-- Prune the change log by age and/or by count; the horizon moves in the same transaction.
-- Returns the number of rows removed.
CREATE FUNCTION syncline.prune(keep_age interval DEFAULT NULL, keep_count bigint DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_through bigint := 0;
    v_n bigint;
BEGIN
    IF keep_age IS NULL AND keep_count IS NULL THEN
        RAISE EXCEPTION 'syncline.prune: give keep_age, keep_count or both';
    END IF;
    -- Serialize against concurrent prunes; writers are not blocked.
    PERFORM 1 FROM syncline.retention FOR UPDATE;
    IF keep_age IS NOT NULL THEN
        SELECT coalesce(max(pos), 0) INTO v_through FROM syncline.changes WHERE committed_at < now() - keep_age;
    END IF;
    IF keep_count IS NOT NULL THEN
        v_through := greatest(v_through, coalesce(
            (SELECT pos FROM syncline.changes ORDER BY pos DESC OFFSET keep_count LIMIT 1), 0));
    END IF;
    IF v_through <= (SELECT pruned_through FROM syncline.retention) THEN
        RETURN 0;
    END IF;
    -- Never split a transaction: extend to its last position.
    SELECT coalesce(max(c2.pos), v_through) INTO v_through
    FROM syncline.changes c1 JOIN syncline.changes c2 ON c2.txid = c1.txid WHERE c1.pos = v_through;
    UPDATE syncline.retention SET pruned_through = v_through;
    DELETE FROM syncline.changes WHERE pos <= v_through;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END;
$$;

-- Canonical JSON text of a filter value, through the column's own type, so that a client's `where`
-- compares equal to what capture renders with to_jsonb(). NULL stays JSON null.
CREATE FUNCTION syncline.canonical_value(collection text, col text, value text) RETURNS text
LANGUAGE plpgsql STABLE
SET "TimeZone" = 'UTC' SET "DateStyle" = 'ISO, YMD'
AS $$
DECLARE
    v_type regtype;
    v_out text;
BEGIN
    SELECT a.atttypid::regtype INTO v_type
    FROM syncline.collections c JOIN pg_attribute a ON a.attrelid = c.relation AND a.attname = col
    WHERE c.name = collection AND col = ANY (c.filterable);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown filter column' USING ERRCODE = '42703';
    END IF;
    IF value IS NULL THEN
        RETURN 'null';
    END IF;
    EXECUTE format('SELECT to_jsonb($1::%s)::text', v_type) INTO v_out USING value;
    RETURN v_out;
END;
$$;
