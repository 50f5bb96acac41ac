// Everything one browser-test run shares: its own PostgreSQL cluster, the `syncline serve` process
// (stopped and started by the scenarios), one Chromium, the output folder with a screenshot per
// step, and helpers that read the dashboard's DOM contract (docs: coord contract, README).
import { mkdirSync, rmSync, mkdtempSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { Browser } from "./cdp.mjs";
import { PostgresCluster } from "./postgres.mjs";
import { SynclineServer, repositoryRoot } from "./server.mjs";
import { recorderSource } from "./recorder.mjs";

/** Where screenshots and logs go: $SYNCLINE_BROWSER_OUT or .build/browser-test (emptied per run). */
export const outputDirectory = process.env.SYNCLINE_BROWSER_OUT ?? join(repositoryRoot, ".build/browser-test");
/** Fixed, so the page's origin (IndexedDB, service worker) is the same after `serve` restarts. */
export const serverPort = Number(process.env.SYNCLINE_BROWSER_PORT ?? 18181);

export class Harness {
  pages = [];
  #step = 0;
  /** A short random tag: memos of this run are unique, so counts in Postgres mean this run only. */
  run = randomBytes(3).toString("hex");

  static async start() {
    const h = new Harness();
    rmSync(outputDirectory, { recursive: true, force: true });
    mkdirSync(outputDirectory, { recursive: true });
    console.log(`browser test output (screenshots, server log): ${outputDirectory}`);
    // Interrupted (Ctrl-C, CI timeout): leave no cluster, server or browser behind.
    for (const signal of ["SIGINT", "SIGTERM"]) {
      process.once(signal, () => { h.stop().finally(() => process.exit(130)); });
    }
    try {
      h.staticDir = mkdtempSync(join(tmpdir(), "syncline-browser-static-"));
      h.pg = await PostgresCluster.start();
      h.server = new SynclineServer({
        databaseURL: h.pg.url, port: serverPort, staticDir: h.staticDir,
        logPath: join(outputDirectory, "serve.log"),
      });
      await h.server.start();
      h.browser = await Browser.launch();
    } catch (e) {
      await h.stop();
      throw e;
    }
    return h;
  }

  get origin() { return this.server.origin; }

  /** A unique memo for one step, findable in the DOM and in Postgres. */
  memo(label) { return `bt-${label}-${this.run}`; }

  /** Opens a tab with the recorder installed, at the dashboard of `user` (or at `path`). */
  async openPage(path = "/?user=alice") {
    const page = await this.browser.newPage();
    await page.addInitScript(recorderSource);
    this.pages.push(page);
    await page.navigate(this.origin + path);
    return page;
  }

  /** Saves a numbered screenshot named after the step; returns its path. */
  async shot(page, name) {
    this.#step += 1;
    const file = join(outputDirectory, `${String(this.#step).padStart(2, "0")}-${name.replace(/[^\w-]+/g, "_")}.png`);
    try { await page.screenshot(file); } catch (e) { console.log(`# screenshot ${name} failed: ${e.message}`); }
    return file;
  }

  /** Appends a line to the measurements file and prints it as a TAP comment. */
  report(line) {
    console.log(line);
    writeFileSync(join(outputDirectory, "measurements.txt"), line + "\n", { flag: "a" });
  }

  // ---- Postgres -----------------------------------------------------------------------------

  /** `{id: balanceText}` for every account (balances as Postgres prints them, e.g. 1250.00). */
  balances() {
    const out = {};
    for (const line of this.pg.psql("SELECT id || '|' || balance::text FROM public.accounts ORDER BY id")) {
      const [id, balance] = line.split("|");
      out[id] = balance;
    }
    return out;
  }

  /** Transactions of `owner`'s accounts: [{id, account, amount, memo}] sorted by id. */
  transactions(owner) {
    return this.pg.queryJSON(
      `SELECT json_build_object('id', t.id::text, 'account', t.account_id, 'amount', t.amount::text, 'memo', coalesce(t.memo, ''))
         FROM public.transactions t JOIN public.accounts a ON a.id = t.account_id
        WHERE a.owner = '${owner}' ORDER BY t.id`);
  }

  /** Number of transactions with this memo (and, if given, with negative amount: the debits). */
  countMemo(memo, { debits = false } = {}) {
    const where = debits ? " AND amount < 0" : "";
    return Number(this.pg.psql(`SELECT count(*) FROM public.transactions WHERE memo = '${memo}'${where}`)[0]);
  }

  // ---- DOM contract -------------------------------------------------------------------------

  /** Waits until `#status` reads `state`; returns the page's time of that status (epoch ms). */
  async waitStatus(page, state, timeoutMs = 20000) {
    await page.waitFor(`#status = ${state}`,
      (s) => document.getElementById("status")?.textContent.trim() === s, { timeoutMs, args: [state] });
    return page.evaluate((s) => {
      const hit = (window.__rec?.status ?? []).filter((x) => x.state === s).pop();
      return hit ? hit.t : performance.timeOrigin + performance.now();
    }, state);
  }

  /** The dashboard's view: accounts, transactions rows, status and pending count. */
  snapshot(page) {
    return page.evaluate(() => {
      const accounts = {};
      for (const el of document.querySelectorAll("[data-account]")) {
        accounts[el.getAttribute("data-account")] = {
          balance: el.querySelector(".balance")?.textContent.trim(),
          pending: el.getAttribute("data-pending") === "true",
        };
      }
      const transactions = [...document.querySelectorAll("#transactions tr[data-key]")].map((tr) => ({
        id: tr.getAttribute("data-key"),
        account: tr.querySelector(".account")?.textContent.trim(),
        amount: tr.querySelector(".amount")?.textContent.trim(),
        memo: tr.querySelector(".memo")?.textContent.trim(),
        pending: tr.getAttribute("data-pending") === "true",
      }));
      return {
        status: document.getElementById("status")?.textContent.trim(),
        pending: document.getElementById("pending")?.textContent.trim(),
        accounts, transactions,
      };
    });
  }

  /** Fills the transfer form and submits it with a click; returns the page's click time. */
  submitTransfer(page, { from, to, amount, memo }) {
    return page.evaluate((a) => {
      const set = (id, v) => {
        const el = document.getElementById(id);
        if (!el) throw new Error(`#${id} missing`);
        el.value = v;
        el.dispatchEvent(new Event("input", { bubbles: true }));
        el.dispatchEvent(new Event("change", { bubbles: true }));
      };
      set("transfer-from", a.from);
      if (document.getElementById("transfer-from").value !== a.from) {
        throw new Error(`#transfer-from has no option ${a.from}`);
      }
      set("transfer-to", a.to);
      set("transfer-amount", a.amount);
      set("transfer-memo", a.memo);
      const t = performance.timeOrigin + performance.now();
      document.getElementById("transfer-submit").click();
      return t;
    }, { from, to, amount, memo });
  }

  /**
   * Records the tab's WebSocket handshakes (101 or not) and closes from DevTools' Network events,
   * so a slow reconnect can be explained: returns a function giving the ones at or after `since`,
   * as text like "+3327 ms 101, closed +14 ms".
   */
  async watchWebSockets(page) {
    await page.send("Network.enable");
    const sockets = new Map();  // requestId -> {opened, status, closed}
    page.browser.onEvent((m) => {
      if (m.sessionId !== page.sessionId) return;
      if (m.method === "Network.webSocketCreated") sockets.set(m.params.requestId, { opened: Date.now() });
      const s = sockets.get(m.params?.requestId);
      if (!s) return;
      if (m.method === "Network.webSocketHandshakeResponseReceived") s.status = m.params.response.status;
      if (m.method === "Network.webSocketClosed") s.closed = Date.now();
    });
    return (since) => [...sockets.values()].filter((s) => s.opened >= since && s.status).map((s) =>
      `+${s.opened - since} ms ${s.status}${s.closed ? `, closed after ${s.closed - s.opened} ms` : ""}`);
  }

  /** The recorder's data (see recorder.mjs). */
  recorded(page) { return page.evaluate(() => window.__rec); }

  /** The README's dashboard snippet: the ```html block after `<!-- snippet:dashboard -->`. */
  readmeSnippet() {
    const readme = readFileSync(join(repositoryRoot, "README.md"), "utf8");
    const at = readme.indexOf("<!-- snippet:dashboard -->");
    if (at < 0) throw new Error("README.md has no <!-- snippet:dashboard --> marker");
    const m = /```html\n([\s\S]*?)\n```/.exec(readme.slice(at));
    if (!m) throw new Error("no ```html block after <!-- snippet:dashboard --> in README.md");
    return m[1] + "\n";
  }

  writeStatic(name, content) { writeFileSync(join(this.staticDir, name), content); }

  async stop() {
    for (const p of this.pages) { try { await p.close(); } catch { /* gone */ } }
    try { await this.browser?.close(); } catch { /* gone */ }
    try { await this.server?.stop(); } catch { /* gone */ }
    try { this.pg?.stop(); } catch { /* gone */ }
    if (this.staticDir) rmSync(this.staticDir, { recursive: true, force: true });
  }
}

/** Numbers compared by value: "1250.00" and "1250" are the same amount (digits checked apart). */
export function decimalKey(text) {
  if (typeof text !== "string" || !/^-?\d+(\.\d+)?$/.test(text.trim())) return `NaN(${text})`;
  let [int, frac = ""] = text.trim().replace(/^-/, "").split(".");
  int = int.replace(/^0+(?=\d)/, "");
  frac = frac.replace(/0+$/, "");
  const neg = text.trim().startsWith("-") && !(int === "0" && frac === "");
  return (neg ? "-" : "") + int + (frac ? "." + frac : "");
}

/** Exact decimal a ± b on digit strings (scale = the larger one), via BigInt. */
export function decimalAdd(a, b) {
  const scale = Math.max((a.split(".")[1] ?? "").length, (b.split(".")[1] ?? "").length);
  const toInt = (s) => {
    const neg = s.startsWith("-");
    const [i, f = ""] = s.replace(/^-/, "").split(".");
    const v = BigInt(i + f.padEnd(scale, "0"));
    return neg ? -v : v;
  };
  const sum = toInt(a) + toInt(b);
  const neg = sum < 0n;
  const digits = (neg ? -sum : sum).toString().padStart(scale + 1, "0");
  const out = scale ? digits.slice(0, -scale) + "." + digits.slice(-scale) : digits;
  return (neg ? "-" : "") + out;
}

export function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, i)];
}
