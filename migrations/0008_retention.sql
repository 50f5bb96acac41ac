-- Retention run by the nodes themselves (issue 15; `serve --retain-changes/--retain-outcomes`).
--
-- Each node calls syncline.run_retention every interval. It takes an advisory lock of its own
-- (7331533713: not the capture lock 7331533711, so commits never wait for a prune, nor the
-- migration lock 7331533712) with a try: a node that finds it taken skips the round. Under the
-- lock it also skips when some node pruned less than `min_interval` ago, so across a deployment
-- at most one run prunes per interval, whichever node gets there first.

ALTER TABLE syncline.retention ADD COLUMN last_run_at timestamptz, ADD COLUMN last_run_node text;

-- SECURITY DEFINER: a runtime role (grant_runtime, 0004) may not delete from the change log or
-- the outcomes, and should not be able to; it may only prune through this function, and only with
-- the bounds its node was started with. Callers must be the schema owner or a runtime role.
CREATE FUNCTION syncline.run_retention(
    node         text,
    min_interval interval,
    keep_age     interval DEFAULT NULL,
    keep_count   bigint DEFAULT NULL,
    outcomes_age interval DEFAULT NULL
) RETURNS TABLE (outcome text, changes_pruned bigint, outcomes_pruned bigint, horizon bigint, ran_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_last timestamptz;
BEGIN
    IF NOT (pg_has_role(session_user, (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'syncline'), 'MEMBER')
            OR EXISTS (SELECT 1 FROM syncline.runtime_roles r WHERE r.role = session_user)) THEN
        RAISE EXCEPTION 'syncline.run_retention: % is neither the owner of schema syncline nor a runtime role', session_user
            USING ERRCODE = '42501';
    END IF;
    IF keep_count IS NOT NULL AND keep_count < 1 THEN
        RAISE EXCEPTION 'syncline.run_retention: keep_count must be at least 1';
    END IF;
    changes_pruned := 0;
    outcomes_pruned := 0;
    ran_at := now();
    IF NOT pg_try_advisory_xact_lock(7331533713) THEN
        outcome := 'locked';
    ELSE
        SELECT r.last_run_at INTO v_last FROM syncline.retention r;
        IF v_last IS NOT NULL AND v_last > now() - min_interval THEN
            outcome := 'recent';
        ELSE
            IF keep_age IS NOT NULL OR keep_count IS NOT NULL THEN
                changes_pruned := syncline.prune(keep_age, keep_count);
            END IF;
            IF outcomes_age IS NOT NULL THEN
                outcomes_pruned := syncline.prune_outcomes(outcomes_age);
            END IF;
            UPDATE syncline.retention SET last_run_at = now(), last_run_node = node;
            outcome := 'pruned';
        END IF;
    END IF;
    SELECT r.pruned_through INTO horizon FROM syncline.retention r;
    RETURN NEXT;
END;
$$;
