-- Snapshot reads: rows of a collection matching a canonical filter, rendered as the published-column
-- JSON that capture produces. Identifiers come from syncline.collections (quoted with %I); values are
-- passed as parameters, never spliced.
CREATE FUNCTION syncline.snapshot_query(collection text, filter jsonb) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c syncline.collections;
    v_cols text;
    v_where text := 'true';
    k text;
    v_type regtype;
BEGIN
    SELECT * INTO c FROM syncline.collections WHERE name = collection;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown collection' USING ERRCODE = '42P01';
    END IF;
    SELECT string_agg(format('%L, t.%I', col, col), ', ') INTO v_cols FROM unnest(c.published) AS col;
    FOR k IN SELECT jsonb_object_keys(filter) LOOP
        IF NOT (k = ANY (c.filterable)) THEN
            RAISE EXCEPTION 'unknown filter column' USING ERRCODE = '42703';
        END IF;
        SELECT a.atttypid::regtype INTO v_type FROM pg_attribute a WHERE a.attrelid = c.relation AND a.attname = k;
        IF filter -> k = 'null'::jsonb THEN
            v_where := v_where || format(' AND t.%I IS NULL', k);
        ELSE
            v_where := v_where || format(' AND t.%I = ($1::jsonb ->> %L)::%s', k, k, v_type);
        END IF;
    END LOOP;
    RETURN format('SELECT jsonb_build_object(%s)::text FROM %s AS t WHERE %s', v_cols, c.relation, v_where);
END;
$$;

-- Feed authorization (design.md, invariant 4): run the collection's policy with the caller's claims
-- already in request.jwt.claims. No policy registered means any authenticated user may read.
CREATE FUNCTION syncline.authorize_feed(collection text, filter jsonb) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_policy regprocedure;
    v_ok boolean;
BEGIN
    SELECT c.policy INTO v_policy FROM syncline.collections c WHERE c.name = collection;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown collection' USING ERRCODE = '42P01';
    END IF;
    IF v_policy IS NULL THEN
        RETURN true;
    END IF;
    EXECUTE format('SELECT %s($1)', v_policy::oid::regproc) INTO v_ok USING filter;
    RETURN coalesce(v_ok, false);
END;
$$;

-- Topic authorization: default deny when no topic policy is registered.
CREATE FUNCTION syncline.authorize_topic(topic text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_policy regprocedure;
    v_ok boolean;
BEGIN
    SELECT p.policy INTO v_policy FROM syncline.topic_policies p WHERE p.id = 1;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT %s($1)', v_policy::oid::regproc) INTO v_ok USING topic;
    RETURN coalesce(v_ok, false);
END;
$$;
