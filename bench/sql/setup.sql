-- Objects of the mutation benchmark (bench/run loads this with psql before the mutation scenario;
-- idempotent). Run as the database owner, e.g.
--   psql "$(cat bench/.data/postgres.url)" -v ON_ERROR_STOP=1 -v accounts=256 -f bench/sql/setup.sql
--
-- Accounts: user `bench<n>` owns `bench-<n>` and `bench-<n>-sink`; client n transfers between its
-- own two accounts, so no two clients touch the same row (no lock waits between clients, no
-- deadlocks between group-commit lanes). Balance 10^12: transfers of 0.01 never run out.
INSERT INTO public.accounts (id, owner, name, balance)
SELECT 'bench-' || i || s.suffix, 'bench' || i, 'Bench ' || i || s.suffix, 1e12
FROM generate_series(1, :accounts) AS i, (VALUES (''), ('-sink')) AS s(suffix)
ON CONFLICT (id) DO NOTHING;

CREATE SCHEMA IF NOT EXISTS syncline_bench;

-- (c-batched): the pgbench side of group commit. One call = one transaction applying p_k transfers,
-- each in its own subtransaction (BEGIN … EXCEPTION, as syncline.apply_batch runs each mutation),
-- with that user's claims and the writer role set per transfer, like Syncline's path. Transfers go
-- from accounts p_first + ((p_start - p_first + i * p_step) mod p_accounts), i = 0 … p_k - 1: with
-- p_step = the number of pgbench clients and p_start ≡ the client, clients never share an account.
-- A failed transfer is rolled back alone and reported as a WARNING (the benchmark counts them).
CREATE OR REPLACE FUNCTION syncline_bench.transfer_batch(p_start int, p_k int, p_step int, p_first int, p_accounts int)
RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_n int;
    v_ok int := 0;
BEGIN
    FOR i IN 0 .. p_k - 1 LOOP
        v_n := p_first + ((p_start - p_first + i * p_step) % p_accounts);
        BEGIN
            PERFORM set_config('request.jwt.claims', format('{"sub":"bench%s"}', v_n), true);
            PERFORM set_config('role', 'syncline_writer', true);
            PERFORM demo.transfer(format('{"from":"bench-%s","to":"bench-%s-sink","amount":0.01}', v_n, v_n)::jsonb);
            PERFORM set_config('role', 'none', true);
            v_ok := v_ok + 1;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'transfer_batch: the transfer from bench-% failed: % %', v_n, SQLSTATE, SQLERRM;
        END;
        PERFORM set_config('request.jwt.claims', '', true);
    END LOOP;
    RETURN v_ok;
END;
$$;
