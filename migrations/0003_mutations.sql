-- Mutations (design.md invariants 5 and 6, protocol §4–5): named mutators, generic row mutators,
-- stored outcomes, and `apply_batch`, which the executor calls once per group commit.
--
-- One batch is one transaction and one round trip. Each mutation:
--   1. advances its client's `last_mid` from mid - 1 to mid. The row lock taken here orders one
--      client's mutations across connections and nodes; a mid that does not follow is a duplicate
--      (answered from `outcomes`) or out of order (an error, nothing consumed);
--   2. runs its mutator in its own subtransaction (a BEGIN … EXCEPTION block), with the client's JWT
--      claims in `request.jwt.claims` and, when a role is given, as that role, so row-level
--      security applies. A raised exception rolls back that mutation alone and becomes its reject.
-- Then the deferred triggers fire (SET CONSTRAINTS … IMMEDIATE): capture assigns the batch's
-- positions, so the ack cursor is known before the function returns, and the outcomes are
-- stored in the same transaction as the effects.

-- The role mutators run as. NOLOGIN; Syncline's login switches to it per mutation (SET LOCAL ROLE),
-- so policies apply even when that login owns the tables or is a superuser. Roles are cluster-wide:
-- several databases of one cluster share it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'syncline_writer') THEN
        CREATE ROLE syncline_writer NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database's migration created it at the same moment
END;
$$;

DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'syncline_writer', 'MEMBER') THEN
        EXECUTE format('GRANT syncline_writer TO %I', current_user);
    END IF;
EXCEPTION WHEN unique_violation THEN
    NULL;
END;
$$;

GRANT USAGE ON SCHEMA syncline TO syncline_writer;

-- Named mutators: name → a function `(args jsonb) RETURNS jsonb`. Its result is the ack's `result`.
CREATE TABLE syncline.mutators (
    name     text PRIMARY KEY CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$'),
    function regprocedure NOT NULL
);

-- Row mutators: `<collection>.insert|update|delete` for collections that allow them, writing only
-- the listed columns.
CREATE TABLE syncline.row_mutations (
    collection text PRIMARY KEY REFERENCES syncline.collections (name) ON DELETE CASCADE ON UPDATE CASCADE,
    operations text[] NOT NULL CHECK (operations <@ '{insert,update,delete}'::text[]),
    writable   text[] NOT NULL DEFAULT '{}'
);

-- Decided mutations, kept for duplicates (a client that never saw its answer resends the same mid).
-- Pruned by age with prune_outcomes(); `clients.last_mid` is never pruned, so a very old duplicate
-- is still recognized as decided and answered `outcome_expired`.
CREATE TABLE syncline.outcomes (
    client_id  text    NOT NULL,
    mid        bigint  NOT NULL,
    request    bytea   NOT NULL,  -- md5 of name and args: a resent mid must carry the same mutation
    acked      boolean NOT NULL,
    pos        bigint,            -- ack: position at which its effects are visible
    result     jsonb,             -- ack: the mutator's result; reject: {code, message, details}
    decided_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, mid)
);
CREATE INDEX outcomes_decided_at ON syncline.outcomes (decided_at);

-- Register (or replace) a named mutator. The function must take one jsonb and return jsonb.
CREATE FUNCTION syncline.register_mutator(name text, fn regprocedure) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    p pg_proc;
BEGIN
    SELECT * INTO p FROM pg_proc WHERE oid = fn;
    IF p.pronargs <> 1 OR p.proargtypes[0] <> 'jsonb'::regtype OR p.prorettype <> 'jsonb'::regtype OR p.proretset THEN
        RAISE EXCEPTION 'syncline.register_mutator: % must take (jsonb) and return jsonb', fn;
    END IF;
    INSERT INTO syncline.mutators (name, function) VALUES (name, fn)
    ON CONFLICT ON CONSTRAINT mutators_pkey DO UPDATE SET function = EXCLUDED.function;
END;
$$;

-- Calls a registered mutator by name through static calls, so each call reuses its cached plan
-- instead of planning a dynamic EXECUTE per mutation. Regenerated whenever syncline.mutators
-- changes (the trigger below); an unknown name rejects not_found.
CREATE FUNCTION syncline.refresh_mutator_dispatch() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_branches text;
BEGIN
    SELECT string_agg(format('ELSIF name = %L THEN RETURN %I.%I(args);', m.name, n.nspname, p.proname), E'\n    ' ORDER BY m.name)
    INTO v_branches
    FROM syncline.mutators m JOIN pg_proc p ON p.oid = m.function JOIN pg_namespace n ON n.oid = p.pronamespace;
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION syncline.call_mutator(name text, args jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $body$
BEGIN
    IF name IS NULL THEN
        NULL;
    %s
    END IF;
    PERFORM syncline.reject('not_found', format('no mutator named %%s', left(name, 80)));
    RETURN NULL;
END
$body$
$f$, coalesce(v_branches, ''));
    RETURN NULL;
END;
$$;

CREATE TRIGGER refresh_mutator_dispatch
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON syncline.mutators
FOR EACH STATEMENT EXECUTE FUNCTION syncline.refresh_mutator_dispatch();
-- The initial (empty) dispatcher.
DELETE FROM syncline.mutators;

-- Allow row mutators on a collection: which operations, and which columns insert/update may set.
CREATE FUNCTION syncline.allow_row_mutations(collection text, operations text[], writable text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    c syncline.collections;
    v_bad text;
BEGIN
    SELECT * INTO c FROM syncline.collections WHERE name = collection;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'syncline.allow_row_mutations: no collection %', collection;
    END IF;
    SELECT w INTO v_bad FROM unnest(writable) AS w
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.relation AND a.attname = w AND a.attnum > 0 AND NOT a.attisdropped)
    LIMIT 1;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'syncline.allow_row_mutations: % has no column %', c.relation, v_bad;
    END IF;
    INSERT INTO syncline.row_mutations (collection, operations, writable) VALUES (c.name, operations, writable)
    ON CONFLICT ON CONSTRAINT row_mutations_pkey DO UPDATE
    SET operations = EXCLUDED.operations, writable = EXCLUDED.writable;
END;
$$;

-- A mutator decides against the mutation: the client gets `reject` with this code and message
-- (and details, a JSON value). Codes are snake_case, e.g. 'insufficient_funds', 'forbidden'.
CREATE FUNCTION syncline.reject(code text, message text, details jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF code IS NULL OR code !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'syncline.reject: code must be snake_case (got %)', code;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'SY001', MESSAGE = coalesce(message, code), DETAIL = code,
                          HINT = coalesce(details::text, '');
END;
$$;

-- Remove outcomes older than keep_age; returns how many. last_mid is kept forever.
CREATE FUNCTION syncline.prune_outcomes(keep_age interval) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_n bigint;
BEGIN
    DELETE FROM syncline.outcomes WHERE decided_at < now() - keep_age;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END;
$$;

-- Phase 2 of capture, as in 0001, but it also records the transaction's last position in
-- `syncline.last_position` (transaction-local), so apply_batch can put it in the acks.
CREATE OR REPLACE FUNCTION syncline.flush_staging() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    me xid8 := pg_current_xact_id();
    v_last bigint;
BEGIN
    IF current_setting('syncline.flushed', true) = 'done' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(7331533711);
    WITH moved AS (
        INSERT INTO syncline.changes (pos, txid, collection, topic, op, key, old_key, row_image, new_match, old_match)
        SELECT nextval('syncline.position_seq'), s.txid, s.collection, s.topic, s.op, s.key, s.old_key,
               s.row_image, s.new_match, s.old_match
        FROM (SELECT * FROM syncline.staging WHERE txid = me ORDER BY seq) AS s
        RETURNING pos
    )
    SELECT max(pos) INTO v_last FROM moved;
    DELETE FROM syncline.staging WHERE txid = me;
    -- Identical payload within a transaction: Postgres folds it to one notification.
    NOTIFY syncline_wake;
    IF v_last IS NOT NULL THEN
        PERFORM set_config('syncline.last_position', v_last::text, true);
    END IF;
    PERFORM set_config('syncline.flushed', 'done', true);
    RETURN NULL;
END;
$$;

-- The published columns of a row image.
CREATE FUNCTION syncline.published_image(c syncline.collections, image jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(k, image -> k), '{}') FROM unnest(c.published) AS k
$$;

-- The quoted column list of a row mutator's `row` or `set` object, which must be non-empty and
-- name writable columns only (else reject invalid).
CREATE FUNCTION syncline.writable_columns(w syncline.row_mutations, value jsonb, what text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_bad text;
BEGIN
    IF jsonb_typeof(value) IS DISTINCT FROM 'object' OR value = '{}' THEN
        PERFORM syncline.reject('invalid', format('args.%s must be a non-empty object', what));
    END IF;
    SELECT k INTO v_bad FROM jsonb_object_keys(value) AS k WHERE NOT (k = ANY (w.writable)) LIMIT 1;
    IF v_bad IS NOT NULL THEN
        PERFORM syncline.reject('invalid', format('column %s is not writable', left(v_bad, 64)));
    END IF;
    RETURN (SELECT string_agg(format('%I', k), ', ') FROM jsonb_object_keys(value) AS k);
END;
$$;

-- Generic row mutators. Identifiers come from syncline.collections / row_mutations (quoted with %I)
-- and are matched against them first; values travel as a jsonb parameter through
-- jsonb_populate_record, so they are typed by the table itself and never spliced into SQL.
-- `c` and `w` are looked up by run_mutator before it switches to the writer role.
CREATE FUNCTION syncline.row_mutation(c syncline.collections, w syncline.row_mutations, op text, args jsonb) RETURNS jsonb
LANGUAGE plpgsql
SET "TimeZone" = 'UTC' SET "DateStyle" = 'ISO, YMD' SET extra_float_digits = 3 SET "IntervalStyle" = 'iso_8601'
AS $$
DECLARE
    v_row jsonb;
    v_key jsonb := args -> 'key';
    v_set jsonb;
    v_expect jsonb := args -> 'expect';
    v_cols text;
    v_match text;
    v_expect_sql text := '';
    v_bad text;
    v_image jsonb;
    v_role text;
BEGIN
    IF jsonb_typeof(args) IS DISTINCT FROM 'object' THEN
        PERFORM syncline.reject('invalid', 'args must be an object');
    END IF;

    IF op = 'insert' THEN
        v_row := args -> 'row';
        v_cols := syncline.writable_columns(w, v_row, 'row');
        EXECUTE format('INSERT INTO %s AS t (%s) SELECT %s FROM jsonb_populate_record(NULL::%s, $1) RETURNING to_jsonb(t)',
                       c.relation, v_cols, v_cols, c.relation)
        INTO v_image USING v_row;
        RETURN syncline.published_image(c, v_image);
    END IF;

    -- update and delete: address one row by its full key, optionally expecting column values.
    IF jsonb_typeof(v_key) IS DISTINCT FROM 'object'
       OR (SELECT count(*) FROM jsonb_object_keys(v_key)) <> cardinality(c.key_columns)
       OR EXISTS (SELECT 1 FROM unnest(c.key_columns) AS k WHERE NOT v_key ? k) THEN
        PERFORM syncline.reject('invalid', format('args.key must give exactly the key columns (%s)', array_to_string(c.key_columns, ', ')));
    END IF;
    SELECT string_agg(format('t.%I = k.%I', k, k), ' AND ') INTO v_match FROM unnest(c.key_columns) AS k;
    IF v_expect IS NOT NULL THEN
        IF jsonb_typeof(v_expect) <> 'object' THEN
            PERFORM syncline.reject('invalid', 'args.expect must be an object');
        END IF;
        SELECT k INTO v_bad FROM jsonb_object_keys(v_expect) AS k
        WHERE NOT (k = ANY (c.published) OR k = ANY (w.writable)) LIMIT 1;
        IF v_bad IS NOT NULL THEN
            PERFORM syncline.reject('invalid', format('column %s cannot be expected', left(v_bad, 64)));
        END IF;
        SELECT coalesce(string_agg(format(' AND t.%I IS NOT DISTINCT FROM e.%I', k, k), ''), '') INTO v_expect_sql
        FROM jsonb_object_keys(v_expect) AS k;
    END IF;

    IF op = 'update' THEN
        v_set := args -> 'set';
        v_cols := syncline.writable_columns(w, v_set, 'set');
        EXECUTE format('UPDATE %s AS t SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $1)) '
                       'FROM jsonb_populate_record(NULL::%s, $2) AS k, jsonb_populate_record(NULL::%s, $3) AS e '
                       'WHERE %s%s RETURNING to_jsonb(t)',
                       c.relation, v_cols, v_cols, c.relation, c.relation, c.relation, v_match, v_expect_sql)
        INTO v_image USING v_set, v_key, coalesce(v_expect, '{}');
    ELSE
        EXECUTE format('DELETE FROM %s AS t USING jsonb_populate_record(NULL::%s, $1) AS k, '
                       'jsonb_populate_record(NULL::%s, $2) AS e WHERE %s%s RETURNING to_jsonb(t)',
                       c.relation, c.relation, c.relation, v_match, v_expect_sql)
        INTO v_image USING v_key, coalesce(v_expect, '{}');
    END IF;
    IF v_image IS NOT NULL THEN
        RETURN CASE WHEN op = 'update' THEN syncline.published_image(c, v_image) ELSE NULL END;
    END IF;

    -- Nothing written: say why. A row the caller can see → its expectation failed (conflict, with
    -- the current published row) or a policy refused the write (forbidden). A row only Syncline's
    -- own login can see → forbidden; no row at all → not_found.
    EXECUTE format('SELECT to_jsonb(t) FROM %s AS t, jsonb_populate_record(NULL::%s, $1) AS k WHERE %s',
                   c.relation, c.relation, v_match)
    INTO v_image USING v_key;
    IF v_image IS NOT NULL THEN
        IF v_expect IS NOT NULL AND EXISTS (
            SELECT 1 FROM jsonb_object_keys(v_expect) AS k WHERE v_image -> k IS DISTINCT FROM v_expect -> k) THEN
            PERFORM syncline.reject('conflict', 'the row does not match args.expect',
                                    jsonb_build_object('row', syncline.published_image(c, v_image)));
        END IF;
        PERFORM syncline.reject('forbidden', 'not allowed to write this row');
    END IF;
    v_role := current_setting('role');
    IF v_role <> 'none' THEN
        PERFORM set_config('role', 'none', true);
        EXECUTE format('SELECT to_jsonb(t) FROM %s AS t, jsonb_populate_record(NULL::%s, $1) AS k WHERE %s',
                       c.relation, c.relation, v_match)
        INTO v_image USING v_key;
        PERFORM set_config('role', v_role, true);
        IF v_image IS NOT NULL THEN
            PERFORM syncline.reject('forbidden', 'not allowed to write this row');
        END IF;
    END IF;
    PERFORM syncline.reject('not_found', 'no row with this key');
    RETURN NULL;
END;
$$;

-- Runs one mutation's mutator: a row mutator (`<collection>.<op>`) or a registered one. The lookups
-- run as Syncline's login; the mutator itself as `role` (when given), which stays set until
-- apply_batch resets it after the mutation.
CREATE FUNCTION syncline.run_mutator(name text, args jsonb, role text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_result jsonb;
    c syncline.collections;
    w syncline.row_mutations;
    v_op text;
BEGIN
    IF name ~ '^[A-Za-z_][A-Za-z0-9_]{0,62}\.(insert|update|delete)$' THEN
        v_op := split_part(name, '.', 2);
        SELECT * INTO c FROM syncline.collections x WHERE x.name = split_part(run_mutator.name, '.', 1);
        SELECT * INTO w FROM syncline.row_mutations r WHERE r.collection = c.name;
        IF c.name IS NULL OR w.collection IS NULL OR NOT (v_op = ANY (w.operations)) THEN
            PERFORM syncline.reject('not_found', format('no mutator named %s', left(name, 80)));
        END IF;
        IF role IS NOT NULL THEN
            PERFORM set_config('role', role, true);
        END IF;
        RETURN syncline.row_mutation(c, w, v_op, args);
    END IF;
    IF role IS NOT NULL THEN
        PERFORM set_config('role', role, true);
    END IF;
    v_result := syncline.call_mutator(name, args);
    RETURN v_result;
END;
$$;

-- What a mutation's error becomes. Mutator rejects keep their code and message; Postgres errors map
-- to protocol codes with a message of our own (constraint and table names stay inside); anything
-- else is `internal`. `log` carries the original for the server's log and is never sent.
CREATE FUNCTION syncline.reject_outcome(state text, message text, detail text, hint text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_details jsonb;
BEGIN
    IF state = 'SY001' THEN
        IF coalesce(hint, '') <> '' THEN
            v_details := hint::jsonb;
        END IF;
        RETURN jsonb_strip_nulls(jsonb_build_object('k', 'reject', 'code', detail, 'message', message, 'details', v_details));
    END IF;
    RETURN jsonb_build_object('k', 'reject', 'log', state || ': ' || message) || CASE
        WHEN state = '42501' THEN jsonb_build_object('code', 'forbidden', 'message', 'not allowed to write this data')
        WHEN state = '23505' THEN jsonb_build_object('code', 'conflict', 'message', 'a row with this key already exists')
        WHEN state IN ('23502', '23503', '23514', '23P01') THEN
            jsonb_build_object('code', 'invalid', 'message', 'the arguments violate a constraint of the data')
        WHEN left(state, 2) = '22' THEN jsonb_build_object('code', 'invalid', 'message', 'invalid argument value: ' || left(message, 200))
        WHEN state = '42703' THEN jsonb_build_object('code', 'invalid', 'message', 'unknown column in the arguments')
        ELSE jsonb_build_object('code', 'internal', 'message', 'the mutation failed on the server')
    END;
END;
$$;

-- The answer for a mutation whose mid did not follow its client's last_mid: the stored outcome of a
-- duplicate (or of an earlier mutation of this batch), or an error that consumes nothing.
CREATE FUNCTION syncline.undecided_outcome(client_id text, sub text, mid bigint, request bytea, decided jsonb[])
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_last bigint;
    v_owner text;
    o syncline.outcomes;
    d jsonb;
BEGIN
    SELECT c.last_mid, c.sub INTO v_last, v_owner FROM syncline.clients c WHERE c.client_id = undecided_outcome.client_id;
    IF NOT FOUND OR v_owner <> sub THEN
        RETURN jsonb_build_object('k', 'error', 'code', 'forbidden', 'message', 'client_id is not registered to this user');
    END IF;
    IF mid > v_last + 1 THEN
        RETURN jsonb_build_object('k', 'error', 'code', 'out_of_order',
                                  'message', format('mid %s does not follow the last decided mid %s', mid, v_last));
    END IF;
    -- Decided earlier in this same batch (outcomes are stored at its end).
    SELECT x INTO d FROM unnest(decided) AS x
    WHERE x ->> 'c' = client_id AND (x ->> 'm')::bigint = mid;
    IF d IS NOT NULL THEN
        IF d ->> 'h' <> encode(request, 'hex') THEN
            RETURN jsonb_build_object('k', 'error', 'code', 'conflict', 'message', format('mid %s was used for another mutation', mid));
        END IF;
        RETURN (d -> 'o') || jsonb_build_object('dup', true);
    END IF;
    SELECT * INTO o FROM syncline.outcomes x WHERE x.client_id = undecided_outcome.client_id AND x.mid = undecided_outcome.mid;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('k', 'error', 'code', 'outcome_expired',
                                  'message', format('mid %s was decided but its outcome is no longer kept; resynchronize', mid));
    END IF;
    IF o.request <> request THEN
        RETURN jsonb_build_object('k', 'error', 'code', 'conflict', 'message', format('mid %s was used for another mutation', mid));
    END IF;
    IF o.acked THEN
        RETURN jsonb_build_object('k', 'ack', 'dup', true, 'pos', o.pos, 'result', o.result);
    END IF;
    RETURN jsonb_build_object('k', 'reject', 'dup', true) || o.result;
END;
$$;

-- One group commit. `batch` = {"role": text|null, "items": [{c: client_id, s: sub, m: mid, n: name,
-- a: args, j: claims JSON text, d?: {code, message} — decided without running (a timeout found by
-- the executor)}]}. Returns {"pos": the ack cursor position, "r": one outcome per item, in order}:
-- {k: ack, result, dup?, pos?} | {k: reject, code, message, details?, dup?, log?} | {k: error, code, message}.
CREATE FUNCTION syncline.apply_batch(batch jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_role text := nullif(batch ->> 'role', '');
    item jsonb;
    v_client text;
    v_sub text;
    v_mid bigint;
    v_name text;
    v_args jsonb;
    v_request bytea;
    v_outcome jsonb;
    v_results jsonb[] := '{}';
    v_decided jsonb[] := '{}';
    v_pos bigint;
    v_state text;
    v_message text;
    v_detail text;
    v_hint text;
    v_capture text;
BEGIN
    FOR item IN SELECT x FROM jsonb_array_elements(batch -> 'items') AS x LOOP
        v_client := item ->> 'c';
        v_sub := item ->> 's';
        v_mid := (item ->> 'm')::bigint;
        v_name := item ->> 'n';
        v_args := coalesce(item -> 'a', '{}');
        v_request := decode(md5(v_name || E'\n' || v_args::text), 'hex');

        UPDATE syncline.clients SET last_mid = v_mid, seen_at = now()
        WHERE client_id = v_client AND sub = v_sub AND last_mid = v_mid - 1;
        IF NOT FOUND THEN
            v_results := v_results || syncline.undecided_outcome(v_client, v_sub, v_mid, v_request, v_decided);
            CONTINUE;
        END IF;

        IF item ? 'd' THEN
            v_outcome := jsonb_build_object('k', 'reject', 'code', item -> 'd' ->> 'code', 'message', item -> 'd' ->> 'message');
        ELSE
            BEGIN
                PERFORM set_config('request.jwt.claims', item ->> 'j', true);
                v_outcome := jsonb_build_object('k', 'ack', 'result', syncline.run_mutator(v_name, v_args, v_role));
                PERFORM set_config('role', 'none', true);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                        v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
                -- Lock trouble is not the mutation's fault: fail the batch, the executor re-runs its
                -- members one by one.
                IF v_state IN ('40001', '40P01', '55P03') THEN
                    RAISE;
                END IF;
                v_outcome := syncline.reject_outcome(v_state, v_message, v_detail, v_hint);
            END;
        END IF;
        -- Claims never leak into the next mutation.
        PERFORM set_config('request.jwt.claims', '', true);
        v_results := v_results || v_outcome;
        v_decided := v_decided || jsonb_build_object('c', v_client, 'm', v_mid, 'h', encode(v_request, 'hex'), 'o', v_outcome);
    END LOOP;

    -- Fire the deferred triggers now, in the order commit would: capture stages every row first
    -- (phase 1), then one flush positions them all (phase 2). (SET CONSTRAINTS ALL at once would
    -- fire phase 2 after each staged row: one flush per row, measured 2-3x slower for 50 transfers.)
    -- Last, the deployer's own deferred constraints are checked — and whatever they write is
    -- captured and flushed at once, so the cursor below covers it.
    SELECT 'SET CONSTRAINTS ' || string_agg(DISTINCT format('%I.syncline_capture', n.nspname), ', ') || ' IMMEDIATE'
    INTO v_capture
    FROM syncline.collections c JOIN pg_class r ON r.oid = c.relation JOIN pg_namespace n ON n.oid = r.relnamespace;
    IF v_capture IS NOT NULL THEN
        EXECUTE v_capture;
    END IF;
    SET CONSTRAINTS syncline.flush_staging IMMEDIATE;
    SET CONSTRAINTS ALL IMMEDIATE;
    v_pos := nullif(current_setting('syncline.last_position', true), '')::bigint;
    IF v_pos IS NULL THEN
        v_pos := syncline.head();
    END IF;

    INSERT INTO syncline.outcomes (client_id, mid, request, acked, pos, result)
    SELECT d ->> 'c', (d ->> 'm')::bigint, decode(d ->> 'h', 'hex'), d -> 'o' ->> 'k' = 'ack',
           CASE WHEN d -> 'o' ->> 'k' = 'ack' THEN v_pos END,
           CASE WHEN d -> 'o' ->> 'k' = 'ack' THEN d -> 'o' -> 'result'
                ELSE (d -> 'o') - 'k' - 'log' - 'dup' END
    FROM unnest(v_decided) AS d
    ON CONFLICT ON CONSTRAINT outcomes_pkey DO UPDATE
    SET request = EXCLUDED.request, acked = EXCLUDED.acked, pos = EXCLUDED.pos, result = EXCLUDED.result,
        decided_at = EXCLUDED.decided_at;

    RETURN jsonb_build_object('pos', v_pos, 'r', to_jsonb(v_results));
END;
$$;

-- Capture runs as the owner of the syncline schema, so a transaction that writes a tracked table
-- under a restricted role (a mutator's SET ROLE syncline_writer, or an application's own role)
-- can still stage and flush its changes at commit. Trigger functions cannot be called directly.
ALTER FUNCTION syncline.capture_row() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION syncline.capture_truncate() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION syncline.flush_staging() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
