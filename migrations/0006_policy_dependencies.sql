-- Authorization follows the data (issue 14; design.md invariant 4; docs/security.md).
--
-- A feed policy reads other rows: the demo's transactions policy asks whether the caller owns the
-- account (`accounts.owner`). When such a row changes, feeds authorized before may no longer pass.
-- The deployer declares the dependency once:
--
--     SELECT syncline.depend_policy('transactions', 'public.accounts', '{owner}', 'account_id', 'id');
--
-- "feeds of `transactions` whose `account_id` is an `accounts.id` depend on that account's `owner`".
-- From then on a commit that changes one of those columns of a dependency row (an UPDATE that
-- changes them, an INSERT, a DELETE, or a change of the key column itself) writes, in commit order in
-- the change log, one 'a' (authorization) entry per affected value: collection = the dependent
-- collection, new_match = {filter_column: canonical value}. The server holds the feeds it maps
-- until their subscribers are re-checked with their own claims (syncline.authorize_each); those that
-- no longer pass end with `revoked` before any row of that commit reaches them. Commits touching
-- other columns (a transfer updating `balance`) fire nothing: the trigger is `UPDATE OF` the
-- declared columns only.

CREATE TABLE syncline.policy_dependencies (
    collection    text     NOT NULL REFERENCES syncline.collections (name) ON DELETE CASCADE ON UPDATE CASCADE,
    on_table      regclass NOT NULL,
    columns       text[]   NOT NULL CHECK (cardinality(columns) > 0),
    filter_column text     NOT NULL,
    key_column    text     NOT NULL,
    PRIMARY KEY (collection, on_table, filter_column)
);

-- Phase 1 for dependencies: stages one 'a' entry per dependent value whose policy inputs changed.
-- A deferred constraint trigger like capture_row, so its entries take positions in the same flush,
-- in the same transaction's contiguous range.
CREATE FUNCTION syncline.capture_policy_change() RETURNS trigger
LANGUAGE plpgsql
SET "TimeZone" = 'UTC' SET "DateStyle" = 'ISO, YMD' SET extra_float_digits = 3 SET "IntervalStyle" = 'iso_8601'
AS $$
DECLARE
    d syncline.policy_dependencies;
    new_j jsonb;
    old_j jsonb;
    v_changed boolean;
    v_value text;
    v_seen text[] := '{}';
BEGIN
    IF TG_OP <> 'DELETE' THEN new_j := to_jsonb(NEW); END IF;
    IF TG_OP <> 'INSERT' THEN old_j := to_jsonb(OLD); END IF;
    FOR d IN SELECT * FROM syncline.policy_dependencies p WHERE p.on_table = TG_RELID ORDER BY p.collection, p.filter_column LOOP
        IF TG_OP = 'UPDATE' THEN
            -- UPDATE OF fires when a column is SET, even to its old value: compare.
            SELECT bool_or(new_j -> c IS DISTINCT FROM old_j -> c) INTO v_changed
            FROM unnest(d.columns || d.key_column) AS c;
            CONTINUE WHEN NOT v_changed;
        END IF;
        -- The old value (its feeds may lose access) and the new one (its feeds may gain or lose).
        FOR v_value IN
            SELECT DISTINCT x FROM (VALUES (old_j ->> d.key_column), (new_j ->> d.key_column)) AS v(x) WHERE x IS NOT NULL
        LOOP
            CONTINUE WHEN (d.collection || '/' || d.filter_column || '/' || v_value) = ANY (v_seen);
            v_seen := v_seen || (d.collection || '/' || d.filter_column || '/' || v_value);
            PERFORM set_config('syncline.flushed', '', true);
            INSERT INTO syncline.staging (txid, collection, op, new_match)
            VALUES (pg_current_xact_id(), d.collection, 'a',
                    jsonb_build_object(d.filter_column,
                                       syncline.canonical_value(d.collection, d.filter_column, v_value)::jsonb));
        END LOOP;
    END LOOP;
    RETURN NULL;
END;
$$;

-- (Re)creates the one dependency trigger of a table: INSERT, DELETE and UPDATE OF the union of
-- its dependencies' columns and key columns; dropped when it has none left.
CREATE FUNCTION syncline.refresh_policy_trigger(on_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_cols text;
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS syncline_policy ON %s', on_table);
    SELECT string_agg(DISTINCT format('%I', c), ', ') INTO v_cols
    FROM syncline.policy_dependencies p, unnest(p.columns || p.key_column) AS c
    WHERE p.on_table = refresh_policy_trigger.on_table;
    IF v_cols IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE CONSTRAINT TRIGGER syncline_policy AFTER INSERT OR DELETE OR UPDATE OF %s ON %s '
                   'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION syncline.capture_policy_change()',
                   v_cols, on_table);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER syncline_policy', on_table);
END;
$$;

-- Declares that the feed policy of `collection` depends on `columns` of `on_table`, for the feeds
-- whose `filter_column` equals that row's `key_column`. Idempotent (a second call replaces the
-- columns). Validated against the catalog: `filter_column` must be filterable on the collection,
-- the columns must exist on the table. Run by the table's owner (it installs a trigger).
CREATE FUNCTION syncline.depend_policy(
    collection    text,
    on_table      regclass,
    columns       text[],
    filter_column text,
    key_column    text
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    c syncline.collections;
    v_cols text[];
    v_bad text;
BEGIN
    SELECT * INTO c FROM syncline.collections WHERE name = collection;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'syncline.depend_policy: no collection %', left(collection, 80)
            USING HINT = 'track the table first: syncline.track(...)';
    END IF;
    IF NOT (filter_column = ANY (c.filterable)) THEN
        RAISE EXCEPTION 'syncline.depend_policy: % is not a filterable column of %', filter_column, collection
            USING HINT = 'a dependency maps a changed row to the feeds that filter on this column';
    END IF;
    IF columns IS NULL OR cardinality(columns) = 0 THEN
        RAISE EXCEPTION 'syncline.depend_policy: name at least one column the policy reads';
    END IF;
    SELECT array_agg(attname::text) INTO v_cols
    FROM pg_attribute WHERE attrelid = on_table AND attnum > 0 AND NOT attisdropped;
    SELECT x INTO v_bad FROM unnest(columns || key_column) AS x WHERE x IS NULL OR x <> ALL (v_cols) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'syncline.depend_policy: % has no column %', on_table, coalesce(v_bad, 'NULL');
    END IF;
    INSERT INTO syncline.policy_dependencies (collection, on_table, columns, filter_column, key_column)
    VALUES (collection, on_table, columns, filter_column, key_column)
    ON CONFLICT ON CONSTRAINT policy_dependencies_pkey DO UPDATE
    SET columns = EXCLUDED.columns, key_column = EXCLUDED.key_column;
    PERFORM syncline.refresh_policy_trigger(on_table);
END;
$$;

-- Removes a dependency (and the table's trigger when it was the last).
CREATE FUNCTION syncline.undepend_policy(collection text, on_table regclass, filter_column text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM syncline.policy_dependencies p
    WHERE p.collection = undepend_policy.collection AND p.on_table = undepend_policy.on_table
      AND p.filter_column = undepend_policy.filter_column;
    PERFORM syncline.refresh_policy_trigger(on_table);
END;
$$;

-- The re-check: one statement for many subscribers of many feeds, each with its own claims.
-- Entry i is (collections[i], filters[i]) — or topics[i] when that is not '' — checked under
-- claims[i]; result[i] whether it still passes. An entry whose check fails (its collection was
-- untracked meanwhile, its policy raised) does not pass: authorization fails closed. Claims are
-- set transaction-locally and the caller's setting restored, as in authorize_many.
CREATE FUNCTION syncline.authorize_each(collections text[], filters jsonb[], topics text[], claims text[])
RETURNS boolean[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_out boolean[] := '{}';
    v_ok boolean;
    v_before text := current_setting('request.jwt.claims', true);
BEGIN
    IF cardinality(collections) <> cardinality(claims) OR cardinality(filters) <> cardinality(claims)
       OR cardinality(topics) <> cardinality(claims) THEN
        RAISE EXCEPTION 'syncline.authorize_each: the four arrays must have the same length';
    END IF;
    FOR i IN 1 .. coalesce(cardinality(claims), 0) LOOP
        PERFORM set_config('request.jwt.claims', claims[i], true);
        BEGIN
            IF coalesce(topics[i], '') <> '' THEN
                v_ok := syncline.authorize_topic(topics[i]);
            ELSE
                v_ok := syncline.authorize_feed(collections[i], filters[i]);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            v_ok := false;
        END;
        v_out := v_out || coalesce(v_ok, false);
    END LOOP;
    PERFORM set_config('request.jwt.claims', coalesce(v_before, ''), true);
    RETURN v_out;
END;
$$;

-- Like capture_row: runs as the schema owner whoever commits the change (a mutator runs as
-- syncline_writer, which may not write the staging table itself).
ALTER FUNCTION syncline.capture_policy_change() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
