-- The live-dashboard demo (design.md): accounts, transactions, notifications, their collections,
-- read policies and seed data. Idempotent: safe to load on every `syncline serve --demo`.

CREATE TABLE IF NOT EXISTS public.accounts (
    id      text PRIMARY KEY,
    owner   text NOT NULL,
    name    text NOT NULL,
    balance numeric NOT NULL DEFAULT 0,
    version int NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS public.transactions (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id text NOT NULL REFERENCES public.accounts (id),
    amount     numeric NOT NULL,
    memo       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS transactions_account_id ON public.transactions (account_id, created_at);

CREATE TABLE IF NOT EXISTS public.notifications (
    id         bigserial PRIMARY KEY,
    user_id    text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notifications_user_id ON public.notifications (user_id);

CREATE SCHEMA IF NOT EXISTS demo;

-- The caller's `sub`, from the claims Syncline sets for each transaction.
CREATE OR REPLACE FUNCTION demo.current_sub() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
$$;

-- accounts: filtered on the caller as owner, or on one account id the caller owns.
CREATE OR REPLACE FUNCTION demo.accounts_policy(filter jsonb) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN filter ? 'owner' THEN filter ->> 'owner' = demo.current_sub()
        WHEN filter ? 'id' THEN EXISTS (SELECT 1 FROM public.accounts a
                                        WHERE a.id = filter ->> 'id' AND a.owner = demo.current_sub())
        ELSE false
    END
$$;

-- transactions: filtered on one account the caller owns.
CREATE OR REPLACE FUNCTION demo.transactions_policy(filter jsonb) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT filter ? 'account_id' AND EXISTS (
        SELECT 1 FROM public.accounts a WHERE a.id = filter ->> 'account_id' AND a.owner = demo.current_sub())
$$;

-- notifications: filtered on the caller's own user_id.
CREATE OR REPLACE FUNCTION demo.notifications_policy(filter jsonb) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT filter ->> 'user_id' = demo.current_sub()
$$;

-- topics: only the caller's own `user:<sub>`.
CREATE OR REPLACE FUNCTION demo.topic_policy(topic text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT topic = 'user:' || demo.current_sub()
$$;

-- The tables get row-level security below (for writes): the feed policies above are what filter
-- feeds, and they allow no more than the read policies do, as `rls` states (docs/security.md).
SELECT syncline.track('public.accounts', '{id}', '{id,owner}', NULL, 'demo.accounts_policy(jsonb)', rls => 'feed_policy_covers');
SELECT syncline.track('public.transactions', '{id}', '{id,account_id}', NULL, 'demo.transactions_policy(jsonb)', rls => 'feed_policy_covers');
SELECT syncline.track('public.notifications', '{id}', '{id,user_id}', NULL, 'demo.notifications_policy(jsonb)', rls => 'feed_policy_covers');
INSERT INTO syncline.topic_policies (id, policy) VALUES (1, 'demo.topic_policy(text)')
ON CONFLICT (id) DO UPDATE SET policy = EXCLUDED.policy;

INSERT INTO public.accounts (id, owner, name, balance) VALUES
    ('alice-checking', 'alice', 'Alice — Checking', 1250.00),
    ('alice-savings',  'alice', 'Alice — Savings',  9000.50),
    ('bob-checking',   'bob',   'Bob — Checking',    420.75)
ON CONFLICT (id) DO NOTHING;

INSERT INTO public.transactions (account_id, amount, memo)
SELECT a, amt, memo FROM (VALUES
    ('alice-checking', 1250.00, 'opening balance'),
    ('alice-savings', 9000.50, 'opening balance'),
    ('bob-checking', 420.75, 'opening balance')) AS v(a, amt, memo)
WHERE NOT EXISTS (SELECT 1 FROM public.transactions);

-- Demo generator: one small random transaction, its balance move and a notification, in one
-- transaction (the server calls this about once a second in --demo mode).
CREATE OR REPLACE FUNCTION demo.generate() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_account public.accounts;
    v_amount numeric := round((random() * 200 - 100)::numeric, 2);
    v_memo text := (ARRAY['coffee', 'groceries', 'salary', 'rent share', 'refund', 'books', 'train'])[1 + floor(random() * 7)::int];
BEGIN
    SELECT * INTO v_account FROM public.accounts ORDER BY random() LIMIT 1;
    INSERT INTO public.transactions (account_id, amount, memo) VALUES (v_account.id, v_amount, v_memo);
    UPDATE public.accounts SET balance = balance + v_amount, version = version + 1 WHERE id = v_account.id;
    IF abs(v_amount) > 80 THEN
        INSERT INTO public.notifications (user_id, body)
        VALUES (v_account.owner, format('%s of %s on %s', v_memo, v_amount, v_account.name));
        PERFORM syncline.publish('user:' || v_account.owner,
            jsonb_build_object('kind', 'large_transaction', 'account', v_account.id, 'amount', v_amount, 'memo', v_memo));
    END IF;
END;
$$;

-- Writes (mutations). Mutators run as the role `syncline_writer` with the caller's claims, so the
-- row-level security policies below decide what a user may write; Syncline's own login (the table
-- owner) is not subject to them.
GRANT USAGE ON SCHEMA demo TO syncline_writer;
GRANT SELECT, UPDATE ON public.accounts TO syncline_writer;
GRANT SELECT, INSERT ON public.transactions TO syncline_writer;
GRANT SELECT, INSERT, DELETE ON public.notifications TO syncline_writer;
GRANT USAGE ON SEQUENCE public.notifications_id_seq TO syncline_writer;

-- The seed above left capture events pending (they fire at commit); ALTER TABLE refuses tables
-- with pending trigger events, so fire them now.
SET CONSTRAINTS ALL IMMEDIATE;

-- What the feed policies read besides the filter (authorization follows the data, docs/security.md):
-- an account's owner decides who may read its transactions and the account itself by id. Giving
-- an account to another user ends the old owner's feeds on it with `revoked`; a transfer (balance,
-- version) re-checks nothing.
SELECT syncline.depend_policy('transactions', 'public.accounts', '{owner}', 'account_id', 'id');
SELECT syncline.depend_policy('accounts', 'public.accounts', '{owner}', 'id', 'id');
ALTER TABLE public.accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.notifications ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS accounts_read ON public.accounts;
DROP POLICY IF EXISTS accounts_owner_update ON public.accounts;
DROP POLICY IF EXISTS transactions_owner_read ON public.transactions;
DROP POLICY IF EXISTS transactions_owner_insert ON public.transactions;
DROP POLICY IF EXISTS notifications_own ON public.notifications;
-- Account names and ids are visible to every writer (a transfer names its destination);
-- only the owner may change an account.
CREATE POLICY accounts_read ON public.accounts FOR SELECT TO syncline_writer USING (true);
CREATE POLICY accounts_owner_update ON public.accounts FOR UPDATE TO syncline_writer
    USING (owner = demo.current_sub()) WITH CHECK (owner = demo.current_sub());
CREATE POLICY transactions_owner_read ON public.transactions FOR SELECT TO syncline_writer
    USING (EXISTS (SELECT 1 FROM public.accounts a WHERE a.id = account_id AND a.owner = demo.current_sub()));
CREATE POLICY transactions_owner_insert ON public.transactions FOR INSERT TO syncline_writer
    WITH CHECK (EXISTS (SELECT 1 FROM public.accounts a WHERE a.id = account_id AND a.owner = demo.current_sub()));
CREATE POLICY notifications_own ON public.notifications FOR ALL TO syncline_writer
    USING (user_id = demo.current_sub()) WITH CHECK (user_id = demo.current_sub());

-- Locks both accounts of a transfer in id order, so opposite transfers cannot deadlock. Runs as the
-- owner: the caller may not lock (= update) the destination.
CREATE OR REPLACE FUNCTION demo.lock_accounts(a text, b text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT 1 FROM public.accounts WHERE id IN (a, b) ORDER BY id FOR UPDATE
$$;

-- The credit side of a transfer: runs as the owner, because the caller does not own the destination.
CREATE OR REPLACE FUNCTION demo.credit(account text, amount numeric, memo text) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    v_id uuid;
BEGIN
    UPDATE public.accounts SET balance = balance + amount, version = version + 1 WHERE id = account;
    INSERT INTO public.transactions (account_id, amount, memo) VALUES (account, amount, memo) RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;
REVOKE ALL ON FUNCTION demo.credit(text, numeric, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION demo.lock_accounts(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION demo.credit(text, numeric, text) TO syncline_writer;
GRANT EXECUTE ON FUNCTION demo.lock_accounts(text, text) TO syncline_writer;

-- transfer {from, to, amount, memo?}: moves money from an account the caller owns to any account,
-- recording one transaction on each side. Rejects: invalid (shape, non-positive amount, more than
-- two decimals, from = to), not_found (unknown account), forbidden (from not owned by the caller),
-- insufficient_funds (with the balance in details).
CREATE OR REPLACE FUNCTION demo.transfer(args jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_from text;
    v_to text;
    v_amount numeric;
    v_memo text;
    v_account public.accounts;
    v_debit uuid;
    v_credit uuid;
    v_balance numeric;
BEGIN
    IF jsonb_typeof(args -> 'from') IS DISTINCT FROM 'string' OR jsonb_typeof(args -> 'to') IS DISTINCT FROM 'string' THEN
        PERFORM syncline.reject('invalid', 'from and to must be account ids (strings)');
    END IF;
    IF jsonb_typeof(args -> 'amount') IS DISTINCT FROM 'number' THEN
        PERFORM syncline.reject('invalid', 'amount must be a number');
    END IF;
    IF args ? 'memo' AND jsonb_typeof(args -> 'memo') NOT IN ('string', 'null') THEN
        PERFORM syncline.reject('invalid', 'memo must be a string');
    END IF;
    v_from := args ->> 'from';
    v_to := args ->> 'to';
    v_amount := (args ->> 'amount')::numeric;
    v_memo := left(coalesce(args ->> 'memo', 'transfer'), 200);
    IF v_amount <= 0 THEN
        PERFORM syncline.reject('invalid', 'amount must be positive');
    END IF;
    IF v_amount <> round(v_amount, 2) THEN
        PERFORM syncline.reject('invalid', 'amount has more than two decimals');
    END IF;
    IF v_from = v_to THEN
        PERFORM syncline.reject('invalid', 'from and to are the same account');
    END IF;
    PERFORM demo.lock_accounts(v_from, v_to);
    SELECT * INTO v_account FROM public.accounts WHERE id = v_from;
    IF NOT FOUND THEN
        PERFORM syncline.reject('not_found', 'no account ' || left(v_from, 64));
    END IF;
    IF v_account.owner IS DISTINCT FROM demo.current_sub() THEN
        PERFORM syncline.reject('forbidden', 'you do not own account ' || v_from);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.accounts WHERE id = v_to) THEN
        PERFORM syncline.reject('not_found', 'no account ' || left(v_to, 64));
    END IF;
    IF v_account.balance < v_amount THEN
        PERFORM syncline.reject('insufficient_funds', format('balance %s is less than %s', v_account.balance, v_amount),
                                jsonb_build_object('balance', v_account.balance));
    END IF;
    UPDATE public.accounts SET balance = balance - v_amount, version = version + 1 WHERE id = v_from
    RETURNING balance INTO v_balance;
    INSERT INTO public.transactions (account_id, amount, memo) VALUES (v_from, -v_amount, v_memo) RETURNING id INTO v_debit;
    v_credit := demo.credit(v_to, v_amount, v_memo);
    RETURN jsonb_build_object('debit', v_debit, 'credit', v_credit, 'balance', v_balance);
END;
$$;

SELECT syncline.register_mutator('transfer', 'demo.transfer(jsonb)');
-- Row mutators: rename your own account; write and delete your own notifications.
SELECT syncline.allow_row_mutations('accounts', '{update}', '{name}');
SELECT syncline.allow_row_mutations('notifications', '{insert,delete}', '{user_id,body}');
