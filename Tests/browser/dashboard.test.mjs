// The real-browser test of issue 11: Debian's headless Chromium, driven over the DevTools protocol,
// against the real `syncline serve --demo` on a fixed port and a PostgreSQL cluster this test
// runs itself. Scenarios run in order on one browser profile (IndexedDB and the service worker
// persist across `serve` restarts, as for a user). A screenshot per step lands in the output
// folder printed at the start; measured figures are printed (never asserted: 2-core machine).
//
//   node --experimental-websocket --test Tests/browser/
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Harness, outputDirectory, decimalKey, decimalAdd, percentile } from "./harness.mjs";

const INSERTS = Number(process.env.SYNCLINE_BROWSER_INSERTS ?? 20);
const OFFLINE_ROWS = 200;
/** The library's default backoff cap (contract: backoff {capMs: 10000}). */
const BACKOFF_CAP_MS = 10000;
/**
 * How long scenario 4 keeps `serve` down: long enough for the client's backoff to reach its cap,
 * so restart→live is measured in the worst case, not right after the first retries.
 */
const OUTAGE_MS = Number(process.env.SYNCLINE_BROWSER_OUTAGE_MS ?? 20000);

let h;
let main;  // the alice dashboard tab most scenarios use

/**
 * SYNCLINE_BROWSER_FAULT=<name> breaks one part on purpose, to see the scenarios meant to catch
 * it fail (the test of the test): double-effect, no-effect (s2, s3), no-service-worker (s4),
 * duplicate-row (s5), broken-snippet (s7).
 */
const FAULT = process.env.SYNCLINE_BROWSER_FAULT ?? "";
const faults = {
  "double-effect": (page) => page.evaluate(() => {
    const c = window.synclineClient, f = c.mutators.transfer;
    c.mutators.transfer = (rows, args) => { f(rows, args); f(rows, args); };
  }),
  "no-effect": (page) => page.evaluate(() => { window.synclineClient.mutators.transfer = () => {}; }),
  "no-service-worker": (page) => page.evaluate(async () => {
    for (const r of await navigator.serviceWorker.getRegistrations()) await r.unregister();
  }),
  "duplicate-row": (page, memo) => page.evaluate((m) => {
    new MutationObserver((_, obs) => {
      const tr = [...document.querySelectorAll("#transactions tr[data-key]")].find((r) => r.querySelector(".memo")?.textContent === m);
      if (tr) { obs.disconnect(); tr.after(tr.cloneNode(true)); }
    }).observe(document, { subtree: true, childList: true, characterData: true });
  }, memo),
  "broken-snippet": () => {},
};
if (FAULT && !faults[FAULT]) throw new Error(`unknown SYNCLINE_BROWSER_FAULT ${FAULT}; known: ${Object.keys(faults).join(", ")}`);
async function inject(name, ...args) {
  if (FAULT !== name) return;
  console.log(`FAULT INJECTED: ${name}`);
  await faults[name](...args);
}

/** Runs a scenario; on failure, screenshots every open tab and saves its console before rethrowing. */
async function scenario(name, fn) {
  if (!h) throw new Error("harness did not start");
  if (!h.server.running) await h.server.start();
  try {
    await fn();
  } catch (e) {
    for (const [i, p] of h.pages.entries()) {
      if (p.closed) continue;
      await h.shot(p, `${name}-FAILED-tab${i}`);
      writeFileSync(join(outputDirectory, `${name}-FAILED-tab${i}-console.txt`), p.console.join("\n") + "\n");
    }
    // The next scenario starts from a fresh tab, not from whatever state this one left.
    if (main && !main.closed) await main.close().catch(() => {});
    main = undefined;
    throw e;
  }
}

async function mainPage() {
  if (!main || main.closed) {
    main = await h.openPage("/?user=alice");
    await h.waitStatus(main, "live", 30000);
    await inject("double-effect", main);
    await inject("no-effect", main);
  }
  return main;
}

/** Waits for a `#status` value recorded at or after `since` (epoch ms); returns its time. */
async function waitStatusSince(page, state, since, timeoutMs = 20000) {
  return page.waitFor(`#status ${state} after ${since}`, (s, t0) => {
    const hit = (window.__rec?.status ?? []).find((x) => x.state === s && x.t >= t0);
    return hit ? hit.t : null;
  }, { timeoutMs, args: [state, since] });
}

async function waitPending(page, n, timeoutMs = 20000) {
  await page.waitFor(`#pending = ${n}`,
    (v) => document.getElementById("pending")?.textContent.trim() === v, { timeoutMs, args: [String(n)] });
}

async function waitOutcome(page, memo, outcome, timeoutMs = 20000) {
  return page.waitFor(`outcome ${outcome} for ${memo}`, (m, o) => {
    for (const li of document.querySelectorAll("#outcomes li[data-outcome]")) {
      if (li.textContent.includes(m) && li.getAttribute("data-outcome") === o) return li.textContent.trim();
    }
    return null;
  }, { timeoutMs, args: [memo, outcome] });
}

/** Waits until the page shows `expected` balances (only the accounts named) — exact digits. */
async function waitBalances(page, expected, timeoutMs = 15000) {
  await page.waitFor(`balances ${JSON.stringify(expected)}`, (exp) => {
    for (const [id, text] of Object.entries(exp)) {
      const el = document.querySelector(`[data-account="${id}"]`);
      if (!el || el.querySelector(".balance")?.textContent.trim() !== text || el.getAttribute("data-pending") === "true") {
        return false;
      }
    }
    return true;
  }, { timeoutMs, args: [expected] });
}

/** Polls Postgres until `fn()` is truthy. */
async function waitDB(what, fn, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} in Postgres`);
    await sleep(100);
  }
}

/** Every value a `.balance` cell took (recorded) must be one of `allowed` (compared by value). */
function assertBalanceHistory(history, account, allowed) {
  const ok = new Set(allowed.map(decimalKey));
  const seen = (history[account] ?? []).map((r) => r.text);
  for (const text of seen) {
    assert.ok(ok.has(decimalKey(text)),
      `${account} showed ${text}; allowed only ${allowed.join(" or ")} (every value shown: ${seen.join(" → ")})`);
  }
  return seen;
}

/** Resets the page's balance history, after the page shows `balances` exactly. */
async function startBalanceHistory(page, balances) {
  await waitBalances(page, balances);
  await page.evaluate(() => { window.__rec.balances = {}; });
}

/** The dashboard's rows equal Postgres's: alice's account balances and her transactions. */
async function assertPageEqualsPostgres(page, owner = "alice") {
  const ownAccounts = h.pg.psql(`SELECT id FROM public.accounts WHERE owner = '${owner}' ORDER BY id`);
  let dom, db, dbBalances;
  const equal = () => {
    const b = h.balances();
    dbBalances = Object.fromEntries(ownAccounts.map((id) => [id, b[id]]));
    db = h.transactions(owner);
    const domAccounts = Object.fromEntries(ownAccounts.map((id) => [id, dom.accounts[id]?.balance]));
    const domTx = dom.transactions.filter((t) => !t.pending)
      .map(({ id, account, amount, memo }) => ({ id, account, amount, memo })).sort((a, b) => (a.id < b.id ? -1 : 1));
    return { domAccounts, domTx, same: JSON.stringify(domAccounts) === JSON.stringify(dbBalances) &&
      JSON.stringify(domTx) === JSON.stringify(db) && !dom.transactions.some((t) => t.pending) };
  };
  const deadline = Date.now() + 10000;
  let cmp;
  for (;;) {
    dom = await h.snapshot(page);
    cmp = equal();
    if (cmp.same || Date.now() > deadline) break;
    await sleep(200);
  }
  assert.deepEqual(cmp.domAccounts, dbBalances, "account balances on the page = Postgres");
  assert.equal(cmp.domTx.length, db.length, "number of transactions on the page = Postgres");
  assert.deepEqual(cmp.domTx, db, "transactions on the page = Postgres (id, account, amount digits, memo)");
  assert.ok(!dom.transactions.some((t) => t.pending), "no optimistic rows left");
}

/** The snippet's list shows `Name: balance` for each account given (exact digits). */
async function snippetShows(page, balances) {
  await page.waitFor(`#snippet-accounts shows ${JSON.stringify(balances)}`, (b) =>
    Object.entries(b).every(([id, v]) =>
      document.querySelector(`#snippet-accounts [data-account="${id}"]`)?.textContent.endsWith(`: ${v}`)),
  { args: [balances], timeoutMs: 15000 });
}

describe("dashboard in headless Chromium", { timeout: 15 * 60 * 1000 }, () => {
  before(async () => { h = await Harness.start(); }, { timeout: 120000 });
  after(async () => { await h?.stop(); }, { timeout: 60000 });

  test("1. a row inserted with psql appears; commit→screen time measured", { timeout: 180000 }, () =>
    scenario("s1", async () => {
      const page = await mainPage();
      await h.shot(page, "s1-dashboard-live");
      const toDOM = [];
      const toFrame = [];
      for (let i = 0; i < INSERTS; i++) {
        const memo = h.memo(`s1-${i}`);
        h.pg.psql(`INSERT INTO public.transactions (account_id, amount, memo) VALUES ('alice-checking', 0.01, '${memo}')`);
        const committed = Date.now();  // psql returned: the row is committed
        const seen = await page.waitFor(`row ${memo} on the page`,
          (m) => window.__rec.memoFirstFrame[m] && [window.__rec.memoFirstSeen[m], window.__rec.memoFirstFrame[m]],
          { args: [memo], intervalMs: 25, timeoutMs: 10000 });
        toDOM.push(seen[0] - committed);
        toFrame.push(seen[1] - committed);
        if (i === 0) await h.shot(page, "s1-first-inserted-row");
        await sleep(100 + Math.random() * 200);  // separate commits, not one burst
      }
      await h.shot(page, `s1-after-${INSERTS}-inserts`);
      const probe = new RegExp(`^bt-s1-\\d+-${h.run}$`);
      const rows = (await h.snapshot(page)).transactions.filter((t) => probe.test(t.memo));
      assert.equal(rows.length, INSERTS, "every inserted row shown once");
      for (const [label, xs] of [["commit→DOM", toDOM], ["commit→frame", toFrame]]) {
        const s = [...xs].sort((a, b) => a - b);
        h.report(`${label} over ${s.length} psql inserts: p50 ${percentile(s, 50).toFixed(0)} ms, ` +
          `p95 ${percentile(s, 95).toFixed(0)} ms, max ${s[s.length - 1].toFixed(0)} ms (goal p95 ≤ 500 ms)`);
      }
    }));

  test("2. a transfer shows pending at once, then confirmed; balances move once", { timeout: 120000 }, () =>
    scenario("s2", async () => {
      const page = await mainPage();
      const before = h.balances();
      const from = "alice-checking", to = "alice-savings", amount = "12.34";
      const memo = h.memo("s2");
      await startBalanceHistory(page, { [from]: before[from], [to]: before[to] });
      const clicked = await h.submitTransfer(page, { from, to, amount, memo });
      await h.shot(page, "s2-transfer-submitted");
      const confirmedText = await waitOutcome(page, memo, "confirmed");
      const after = { [from]: decimalAdd(before[from], "-" + amount), [to]: decimalAdd(before[to], amount) };
      await waitBalances(page, after);
      await waitPending(page, 0);
      await h.shot(page, "s2-transfer-confirmed");
      const rec = await h.recorded(page);
      const fromSeen = assertBalanceHistory(rec.balances, from, [before[from], after[from]]);
      const toSeen = assertBalanceHistory(rec.balances, to, [before[to], after[to]]);
      // "At once": the optimistic effect was on the page (marked pending) before the answer.
      const optimistic = (rec.balances[from] ?? []).find((r) => r.pending && decimalKey(r.text) === decimalKey(after[from]));
      assert.ok(optimistic, `the debit showed as pending before it was confirmed (values: ${JSON.stringify(rec.balances[from])})`);
      const outcomes = (rec.outcomes[memo] ?? []).map((o) => o.outcome);
      assert.equal(outcomes[0], "pending", `outcome went pending first (${outcomes.join(" → ")}); ${confirmedText}`);
      // data-mid comes once the mutation is queued (stored), while it is still pending.
      const pendingMid = rec.outcomes[memo].find((o) => o.outcome === "pending" && o.mid)?.mid;
      assert.match(pendingMid ?? "", /^\d+$/, "the pending outcome names its mutation id (data-mid)");
      assert.equal(rec.outcomes[memo].at(-1).mid, pendingMid, "the confirmed outcome is the same mutation");
      assert.ok((rec.memoMaxRows[memo] ?? 0) <= 2, `at most 2 rows (debit, credit) with the memo at once, saw ${rec.memoMaxRows[memo]}`);
      const dbAfter = h.balances();
      assert.equal(dbAfter[from], after[from]);
      assert.equal(dbAfter[to], after[to]);
      assert.equal(h.countMemo(memo), 2, "one debit and one credit in Postgres");
      const rows = (await h.snapshot(page)).transactions.filter((t) => t.memo === memo);
      assert.equal(rows.length, 2, "the page shows the debit and the credit once each");
      assert.ok(rows.every((r) => !r.pending));
      h.report(`transfer: click→pending ${(optimistic.t - clicked).toFixed(0)} ms; ` +
        `${from} showed ${fromSeen.join(" → ")}; ${to} showed ${toSeen.join(" → ")}`);
    }));

  test("3. an overdraft shows pending, then is rolled back with insufficient_funds", { timeout: 120000 }, () =>
    scenario("s3", async () => {
      const page = await mainPage();
      const before = h.balances();
      const from = "alice-checking", to = "alice-savings";
      const amount = decimalAdd(before[from], "1000.00");
      const memo = h.memo("s3");
      await startBalanceHistory(page, { [from]: before[from], [to]: before[to] });
      await h.submitTransfer(page, { from, to, amount, memo });
      await h.shot(page, "s3-overdraft-submitted");
      const text = await waitOutcome(page, memo, "rejected");
      assert.match(text, /insufficient_funds/, "the rejection names insufficient_funds");
      await waitBalances(page, { [from]: before[from], [to]: before[to] });
      await waitPending(page, 0);
      await h.shot(page, "s3-overdraft-rolled-back");
      const rec = await h.recorded(page);
      assertBalanceHistory(rec.balances, from, [before[from], decimalAdd(before[from], "-" + amount)]);
      assertBalanceHistory(rec.balances, to, [before[to], decimalAdd(before[to], amount)]);
      const outcomes = (rec.outcomes[memo] ?? []).map((o) => o.outcome);
      assert.equal(outcomes[0], "pending", `outcome went pending first (${outcomes.join(" → ")})`);
      const pendingShown = (rec.balances[from] ?? []).some((r) => r.pending) ||
        rec.memoPendingSeen[memo] !== undefined;
      assert.ok(pendingShown, "the overdraft showed as a pending effect before its rollback");
      assert.deepEqual(h.balances(), before, "balances untouched in Postgres");
      assert.equal(h.countMemo(memo), 0, "no transaction recorded");
      const rows = (await h.snapshot(page)).transactions.filter((t) => t.memo === memo);
      assert.equal(rows.length, 0, "no row of the overdraft left on the page");
    }));

  test("4. serve stops; offline transfer queued, survives a reload, applied once after restart", { timeout: 180000 }, () =>
    scenario("s4", async () => {
      const page = await mainPage();
      const memo = h.memo("s4");
      await inject("no-service-worker", page);
      const stopped = Date.now();
      await h.server.stop();
      await waitStatusSince(page, "offline", stopped);
      await h.shot(page, "s4-server-stopped-offline");
      await h.submitTransfer(page, { from: "alice-checking", to: "bob-checking", amount: "1.00", memo });
      await waitPending(page, 1);
      await h.shot(page, "s4-transfer-queued-offline");
      await page.reload();
      const sockets = await h.watchWebSockets(page);
      const afterReload = await page.evaluate(() => ({ href: location.href, sw: !!navigator.serviceWorker?.controller }));
      assert.ok(afterReload.href.startsWith(h.origin), `reloaded from the service worker (at ${afterReload.href})`);
      assert.ok(afterReload.sw, "the reloaded page is controlled by the service worker");
      await page.waitFor("accounts shown from the store while offline",
        () => document.querySelectorAll("[data-account] .balance").length > 0, { timeoutMs: 15000 });
      await waitPending(page, 1);
      await h.shot(page, "s4-reloaded-offline-still-queued");
      assert.equal(h.countMemo(memo), 0, "nothing applied while the server is down");
      await sleep(Math.max(0, OUTAGE_MS - (Date.now() - stopped)));
      const outage = Date.now() - stopped;
      const ready = await h.server.start();
      const live = await waitStatusSince(page, "live", ready, 2 * BACKOFF_CAP_MS + 20000);
      h.report(`serve ready → page live after a ${(outage / 1000).toFixed(1)} s outage: ${(live - ready).toFixed(0)} ms ` +
        `(goal ≤ backoff cap ${BACKOFF_CAP_MS} ms + 2 s); WebSockets opened since ready: ${sockets(ready).join("; ")}`);
      await waitPending(page, 0);
      await waitDB(`the transfer ${memo}`, () => h.countMemo(memo, { debits: true }) >= 1);
      await waitOutcome(page, memo, "confirmed");
      await sleep(1000);  // a second application would land about now
      assert.equal(h.countMemo(memo, { debits: true }), 1, "the queued transfer applied exactly once");
      assert.equal(h.countMemo(memo), 2, "one debit, one credit");
      await assertPageEqualsPostgres(page);
      await h.shot(page, "s4-restarted-live-applied-once");
    }));

  test("5. 200 rows committed while offline all appear after reconnecting, each once", { timeout: 180000 }, () =>
    scenario("s5", async () => {
      const page = await mainPage();
      const stopped = Date.now();
      await h.server.stop();
      await waitStatusSince(page, "offline", stopped);
      const memos = Array.from({ length: OFFLINE_ROWS }, (_, i) => h.memo(`s5-${i}`));
      await inject("duplicate-row", page, memos[7]);
      // One statement per row, each its own commit.
      h.pg.psql(memos.map((m) => `INSERT INTO public.transactions (account_id, amount, memo) VALUES ('alice-savings', 0.01, '${m}');`).join("\n"));
      await h.shot(page, "s5-offline-rows-committed");
      const ready = await h.server.start();
      const live = await waitStatusSince(page, "live", ready, BACKOFF_CAP_MS + 20000);
      h.report(`serve ready → page live (${OFFLINE_ROWS} rows to catch up): ${(live - ready).toFixed(0)} ms`);
      await page.waitFor(`${OFFLINE_ROWS} offline rows on the page`, (ms) => {
        const shown = new Set([...document.querySelectorAll("#transactions tr[data-key] .memo")].map((e) => e.textContent.trim()));
        return ms.every((m) => shown.has(m));
      }, { args: [memos], timeoutMs: 20000 });
      await h.shot(page, "s5-all-rows-shown");
      const dom = await h.snapshot(page);
      const counts = new Map();
      for (const t of dom.transactions) counts.set(t.memo, (counts.get(t.memo) ?? 0) + 1);
      const notOnce = memos.filter((m) => counts.get(m) !== 1);
      assert.deepEqual(notOnce, [], "each offline row shown exactly once");
      const rec = await h.recorded(page);
      const doubled = memos.filter((m) => (rec.memoMaxRows[m] ?? 0) > 1);
      assert.deepEqual(doubled, [], "no offline row ever shown twice");
      await assertPageEqualsPostgres(page);
    }));

  test("6. two tabs: the leader closes with a queued transfer; the other applies it once", { timeout: 180000 }, () =>
    scenario("s6", async () => {
      const a = await mainPage();
      const b = await h.openPage("/?user=alice");
      await h.waitStatus(b, "live", 30000);
      const leaders = [await a.evaluate(() => window.synclineClient.status.leader),
                       await b.evaluate(() => window.synclineClient.status.leader)];
      assert.deepEqual(leaders, [true, false], "the first tab leads, the second follows");
      await h.shot(b, "s6-second-tab-follower");
      const memo = h.memo("s6");
      const stopped = Date.now();
      await h.server.stop();
      await waitStatusSince(a, "offline", stopped);
      await a.bringToFront();
      await h.submitTransfer(a, { from: "alice-checking", to: "bob-checking", amount: "2.00", memo });
      await waitPending(a, 1);
      await h.shot(a, "s6-leader-queued-offline");
      await a.close();
      main = undefined;
      await b.bringToFront();
      await b.waitFor("the second tab takes the lead", () => window.synclineClient?.status.leader === true, { timeoutMs: 15000 });
      await h.shot(b, "s6-second-tab-leads");
      assert.equal(h.countMemo(memo), 0, "nothing applied while the server is down");
      const ready = await h.server.start();
      const live = await waitStatusSince(b, "live", ready, BACKOFF_CAP_MS + 20000);
      h.report(`serve ready → the new leader tab live: ${(live - ready).toFixed(0)} ms`);
      await waitDB(`the transfer ${memo}`, () => h.countMemo(memo, { debits: true }) >= 1);
      await waitPending(b, 0);
      await sleep(1000);
      assert.equal(h.countMemo(memo, { debits: true }), 1, "the leader's queued transfer applied exactly once");
      await assertPageEqualsPostgres(b);
      await h.shot(b, "s6-applied-once");
      main = b;
    }));

  test("7. the README's dashboard snippet, verbatim, shows live rows and makes a transfer", { timeout: 120000 }, () =>
    scenario("s7", async () => {
      // Alone in the browser, so the snippet's page leads its own connection.
      for (const p of h.pages) if (!p.closed) await p.close();
      main = undefined;
      let snippet = h.readmeSnippet();
      await inject("broken-snippet");
      if (FAULT === "broken-snippet") snippet = snippet.replace('"/client/syncline.js"', '"/client/missing.js"');
      h.writeStatic("snippet.html", snippet);
      const page = await h.openPage("/app/snippet.html");
      await page.waitFor("#snippet-status live",
        () => /\blive\b/.test(document.getElementById("snippet-status")?.textContent ?? ""), { timeoutMs: 30000 });
      const before = h.balances();
      await snippetShows(page, { "alice-checking": before["alice-checking"], "alice-savings": before["alice-savings"] });
      await h.shot(page, "s7-snippet-live");
      // A row committed now shows up too (live, not only a snapshot).
      h.pg.psql("UPDATE public.accounts SET balance = balance + 0.5 WHERE id = 'alice-savings'");
      await snippetShows(page, { "alice-savings": decimalAdd(before["alice-savings"], "0.50") });
      // The snippet's button: 1.00 from alice-checking to bob-checking, memo "snippet".
      const debitsBefore = h.countMemo("snippet", { debits: true });
      await page.evaluate(() => document.getElementById("snippet-transfer").click());
      await page.waitFor("#snippet-result confirmed",
        () => document.getElementById("snippet-result")?.textContent.trim() === "confirmed", { timeoutMs: 15000 });
      assert.equal(h.countMemo("snippet", { debits: true }), debitsBefore + 1, "the snippet's transfer applied once");
      const expected = decimalAdd(before["alice-checking"], "-1.00");
      assert.equal(h.balances()["alice-checking"], expected);
      await snippetShows(page, { "alice-checking": expected });
      await h.shot(page, "s7-snippet-transferred");
    }));
});
