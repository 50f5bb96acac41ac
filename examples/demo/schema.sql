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

SELECT syncline.track('public.accounts', '{id}', '{id,owner}', NULL, 'demo.accounts_policy(jsonb)');
SELECT syncline.track('public.transactions', '{id}', '{id,account_id}', NULL, 'demo.transactions_policy(jsonb)');
SELECT syncline.track('public.notifications', '{id}', '{id,user_id}', NULL, 'demo.notifications_policy(jsonb)');
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
