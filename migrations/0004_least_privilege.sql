-- Least privilege and row-level security (issue 14; docs/security.md).
--
-- 1. `syncline serve` can run as a runtime role that owns nothing and can run no DDL:
--    syncline.grant_runtime(role) grants it exactly what serve needs, and remembers it, so that
--    tables tracked later are readable by it too. `syncline migrate --grant-runtime ROLE` calls it.
-- 2. syncline.track refuses a table with row-level security enabled unless the deployer states
--    that the feed policy covers it (rls => 'feed_policy_covers'): RLS does not filter feeds.

-- What the deployer stated about row-level security when tracking the table (NULL: nothing).
ALTER TABLE syncline.collections ADD COLUMN rls text CHECK (rls IN ('feed_policy_covers'));

-- Roles `syncline serve` logs in as (granted by grant_runtime).
CREATE TABLE syncline.runtime_roles (
    role       text PRIMARY KEY,
    granted_at timestamptz NOT NULL DEFAULT now()
);

-- Lets every runtime role read one tracked table: SELECT, USAGE on its schema, and a permissive
-- SELECT policy for those roles alone, so that snapshots see every row even under RLS (feeds are
-- filtered by the feed policy; a snapshot filtered by RLS as well would disagree with the change
-- log, which capture writes as the schema owner). Also the feed policy function: EXECUTE and its
-- schema. Runs as the caller of track/grant_runtime, who must own the table.
CREATE FUNCTION syncline.grant_runtime_on(relation regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_roles text;
    v_schema text;
    v_policy regprocedure;
BEGIN
    SELECT string_agg(format('%I', r.role), ', ' ORDER BY r.role) INTO v_roles FROM syncline.runtime_roles r;
    IF v_roles IS NULL THEN
        RETURN;
    END IF;
    SELECT n.nspname INTO v_schema FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', v_schema, v_roles);
    EXECUTE format('GRANT SELECT ON %s TO %s', relation, v_roles);
    EXECUTE format('DROP POLICY IF EXISTS syncline_runtime_read ON %s', relation);
    EXECUTE format('CREATE POLICY syncline_runtime_read ON %s FOR SELECT TO %s USING (true)', relation, v_roles);
    SELECT c.policy INTO v_policy FROM syncline.collections c WHERE c.relation = grant_runtime_on.relation;
    IF v_policy IS NOT NULL THEN
        SELECT n.nspname INTO v_schema FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = v_policy;
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', v_schema, v_roles);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', v_policy, v_roles);
    END IF;
END;
$$;

-- Grants a login role what `syncline serve` needs and nothing more (docs/security.md):
--   read:    the change log, its horizon, the catalog, meta, the migration record, tracked tables;
--   write:   client registrations (clients) and mutation outcomes (outcomes) — apply_batch;
--   execute: the syncline functions (PUBLIC may execute functions by default), feed and topic
--            policies, and membership in syncline_writer, the role mutators run as.
-- No ownership, no CREATE on any schema: the role cannot run DDL. LISTEN needs no grant.
CREATE FUNCTION syncline.grant_runtime(role text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r pg_roles;
    c syncline.collections;
    v_schema text;
    v_policy regprocedure;
BEGIN
    SELECT * INTO r FROM pg_roles WHERE rolname = role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'syncline.grant_runtime: there is no role %', role
            USING HINT = 'create the login role first, e.g. CREATE ROLE syncline_runtime LOGIN PASSWORD ''…''';
    END IF;
    IF r.rolsuper THEN
        RAISE WARNING 'syncline.grant_runtime: % is a superuser: it can do anything, grants or not', role;
    END IF;
    IF pg_has_role(role, (SELECT nspowner FROM pg_namespace WHERE nspname = 'syncline'), 'USAGE') AND NOT r.rolsuper THEN
        RAISE WARNING 'syncline.grant_runtime: % owns the syncline schema (or is a member of its owner): it can run DDL there', role;
    END IF;
    INSERT INTO syncline.runtime_roles (role) VALUES (role) ON CONFLICT ON CONSTRAINT runtime_roles_pkey DO NOTHING;
    EXECUTE format('GRANT USAGE ON SCHEMA syncline TO %I', role);
    EXECUTE format('GRANT SELECT ON syncline.meta, syncline.schema_migrations, syncline.collections, syncline.changes, '
                   'syncline.retention, syncline.topic_policies, syncline.mutators, syncline.row_mutations TO %I', role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON syncline.clients, syncline.outcomes TO %I', role);
    EXECUTE format('GRANT syncline_writer TO %I', role);
    FOR c IN SELECT * FROM syncline.collections LOOP
        PERFORM syncline.grant_runtime_on(c.relation);
    END LOOP;
    SELECT p.policy INTO v_policy FROM syncline.topic_policies p WHERE p.id = 1;
    IF v_policy IS NOT NULL THEN
        SELECT n.nspname INTO v_schema FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = v_policy;
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', v_schema, role);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', v_policy, role);
    END IF;
END;
$$;

-- track, as in 0001, with `rls` (see the top of this file) and the runtime roles' grants.
DROP FUNCTION syncline.track(regclass, text[], text[], text[], regprocedure, text);
CREATE FUNCTION syncline.track(
    relation    regclass,
    key_columns text[],
    filterable  text[] DEFAULT '{}',
    published   text[] DEFAULT NULL,
    policy      regprocedure DEFAULT NULL,
    name        text DEFAULT NULL,
    rls         text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_name text := coalesce(name, (SELECT c.relname FROM pg_class c WHERE c.oid = relation));
    v_cols text[];
    v_bad text;
    v_published text[];
BEGIN
    IF rls IS NOT NULL AND rls <> 'feed_policy_covers' THEN
        RAISE EXCEPTION 'syncline.track: rls must be NULL or ''feed_policy_covers'' (got %)', left(rls, 40);
    END IF;
    IF (SELECT c.relrowsecurity FROM pg_class c WHERE c.oid = relation) AND rls IS NULL THEN
        RAISE EXCEPTION 'syncline.track: % has row-level security enabled, but RLS does not filter Syncline feeds', relation
            USING DETAIL = 'A feed''s rows come from the change log, which capture writes as the owner of the syncline '
                           'schema and the server reads as its own role, and its snapshot is read by that role too: your '
                           'RLS policies are not applied to them. The feed policy (track''s policy argument) is the only '
                           'read boundary, for snapshots, catch-ups and live changes alike.',
                  HINT = 'Check that the feed policy lets a user read no more than your RLS policies do, then say so: '
                         'syncline.track(..., rls => ''feed_policy_covers''). See docs/security.md.';
    END IF;
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
    INSERT INTO syncline.collections (name, relation, key_columns, filterable, published, policy, rls)
    VALUES (v_name, relation, key_columns, filterable, v_published, policy, rls)
    ON CONFLICT ON CONSTRAINT collections_pkey DO UPDATE
    SET relation = EXCLUDED.relation, key_columns = EXCLUDED.key_columns, filterable = EXCLUDED.filterable,
        published = EXCLUDED.published, policy = EXCLUDED.policy, rls = EXCLUDED.rls;
    EXECUTE format('DROP TRIGGER IF EXISTS syncline_capture ON %s', relation);
    EXECUTE format('DROP TRIGGER IF EXISTS syncline_capture_truncate ON %s', relation);
    EXECUTE format('CREATE CONSTRAINT TRIGGER syncline_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION syncline.capture_row()', relation);
    EXECUTE format('CREATE TRIGGER syncline_capture_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION syncline.capture_truncate()', relation);
    -- Capture also under session_replication_role = replica (logical replication apply, pg_restore).
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER syncline_capture', relation);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER syncline_capture_truncate', relation);
    PERFORM syncline.grant_runtime_on(relation);
END;
$$;
