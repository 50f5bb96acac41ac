// A small Chrome DevTools Protocol driver: launches Debian's headless `chromium`, talks CDP over
// the browser's WebSocket (Node's global WebSocket, `node --experimental-websocket`), and opens
// tabs as flattened target sessions. No npm packages: the browser test needs nothing downloaded.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/** Error raised for a CDP call that the browser answered with `error`. */
export class CDPError extends Error {
  constructor(method, error) {
    super(`${method}: ${error.message}${error.data ? ` (${error.data})` : ""}`);
    this.code = error.code;
  }
}

/** The browser: one DevTools WebSocket; tabs are sessions on it (Target.attachToTarget flatten). */
export class Browser {
  #ws;
  #nextId = 1;
  #calls = new Map();
  #listeners = new Set();
  #process;
  #profile;
  #ownsProfile;
  log = [];

  /**
   * Launches chromium headless with a fresh (or the given) profile folder and connects to it.
   * @param {{executable?: string, profile?: string, args?: string[], timeoutMs?: number}} options
   */
  static async launch(options = {}) {
    const executable = options.executable ?? process.env.CHROMIUM ?? "chromium";
    const ownsProfile = !options.profile;
    const profile = options.profile ?? mkdtempSync(join(tmpdir(), "syncline-chromium-"));
    const args = [
      "--headless=new", "--remote-debugging-port=0", `--user-data-dir=${profile}`,
      "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-features=Translate,MediaRouter,OptimizationHints",
      // Background tabs keep full-speed timers: the tab-takeover scenario watches a hidden tab.
      "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
      "--disable-backgrounding-occluded-windows",
      "--window-size=1200,900",
      ...(process.getuid?.() === 0 ? ["--no-sandbox"] : []),
      ...(options.args ?? []),
      "about:blank",
    ];
    const child = spawn(executable, args, { stdio: ["ignore", "ignore", "pipe"] });
    const browser = new Browser();
    browser.#process = child;
    browser.#profile = profile;
    browser.#ownsProfile = ownsProfile;
    const url = await new Promise((resolve, reject) => {
      let stderr = "";
      const timer = setTimeout(() => {
        reject(new Error(`chromium did not print its DevTools URL within ${options.timeoutMs ?? 30000} ms:\n${stderr}`));
      }, options.timeoutMs ?? 30000);
      child.on("error", (e) => { clearTimeout(timer); reject(new Error(`cannot start ${executable}: ${e.message}`)); });
      child.on("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`chromium exited (${code ?? signal}) before DevTools was up:\n${stderr}`));
      });
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk) => {
        stderr += chunk;
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(stderr);
        if (m) { clearTimeout(timer); resolve(m[1]); }
        // Fallback: the port file chromium writes into the profile.
        const portFile = join(profile, "DevToolsActivePort");
        if (!m && existsSync(portFile)) {
          const [port, path] = readFileSync(portFile, "utf8").split("\n");
          if (port && path) { clearTimeout(timer); resolve(`ws://127.0.0.1:${port}${path}`); }
        }
      });
    });
    child.removeAllListeners("exit");
    child.stderr.on("data", (chunk) => { browser.log.push(chunk); if (browser.log.length > 500) browser.log.shift(); });
    await browser.#connect(url);
    return browser;
  }

  async #connect(url) {
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error(`cannot connect to ${url}`));
    });
    ws.onmessage = (event) => this.#receive(JSON.parse(event.data));
    ws.onclose = () => {
      for (const { reject, method } of this.#calls.values()) reject(new Error(`${method}: DevTools connection closed`));
      this.#calls.clear();
    };
    this.#ws = ws;
  }

  #receive(message) {
    if (message.id !== undefined) {
      const call = this.#calls.get(message.id);
      if (!call) return;
      this.#calls.delete(message.id);
      if (message.error) call.reject(new CDPError(call.method, message.error));
      else call.resolve(message.result);
      return;
    }
    for (const listener of this.#listeners) listener(message);
  }

  /** Sends one CDP command (to the browser, or to a tab's session). */
  send(method, params = {}, sessionId = undefined, timeoutMs = 30000) {
    const id = this.#nextId++;
    const message = { id, method, params };
    if (sessionId) message.sessionId = sessionId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#calls.delete(id);
        reject(new Error(`${method}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#calls.set(id, {
        method,
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.#ws.send(JSON.stringify(message));
    });
  }

  /** Calls `listener(message)` for every CDP event; returns the unsubscribe function. */
  onEvent(listener) {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Opens a new tab at `url` (default about:blank) and attaches to it. */
  async newPage(url = "about:blank") {
    const { targetId } = await this.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await this.send("Target.attachToTarget", { targetId, flatten: true });
    const page = new Page(this, targetId, sessionId);
    await page.init();
    if (url !== "about:blank") await page.navigate(url);
    return page;
  }

  /** Page targets currently open. */
  async pages() {
    const { targetInfos } = await this.send("Target.getTargets");
    return targetInfos.filter((t) => t.type === "page");
  }

  /** Closes the browser and removes its profile folder if it made one. */
  async close() {
    try { await this.send("Browser.close", {}, undefined, 5000); } catch { /* already gone */ }
    const child = this.#process;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    }
    try { this.#ws?.close(); } catch { /* closed */ }
    if (this.#ownsProfile) rmSync(this.#profile, { recursive: true, force: true });
  }
}

/** One tab: CDP commands on its session, with the helpers the browser test needs. */
export class Page {
  /** Console messages and uncaught exceptions of this tab, newest last (for failure reports). */
  console = [];
  #loadWaiters = [];

  constructor(browser, targetId, sessionId) {
    this.browser = browser;
    this.targetId = targetId;
    this.sessionId = sessionId;
    this.closed = false;
    browser.onEvent((m) => {
      if (m.sessionId !== sessionId) return;
      if (m.method === "Runtime.consoleAPICalled") {
        const text = m.params.args.map((a) => a.value ?? a.description ?? a.type).join(" ");
        this.#remember(`[${m.params.type}] ${text}`);
      } else if (m.method === "Runtime.exceptionThrown") {
        const d = m.params.exceptionDetails;
        this.#remember(`[exception] ${d.exception?.description ?? d.text}`);
      } else if (m.method === "Page.loadEventFired") {
        for (const w of this.#loadWaiters.splice(0)) w();
      } else if (m.method === "Inspector.detached" || m.method === "Target.detachedFromTarget") {
        this.closed = true;
      }
    });
  }

  #remember(line) {
    this.console.push(line);
    if (this.console.length > 300) this.console.shift();
  }

  send(method, params = {}, timeoutMs) { return this.browser.send(method, params, this.sessionId, timeoutMs); }

  async init() {
    await this.send("Page.enable");
    await this.send("Runtime.enable");
    await this.send("Page.setLifecycleEventsEnabled", { enabled: true });
  }

  /** Runs `source` in the page (before its own scripts) on every navigation from now on. */
  async addInitScript(source) {
    const { identifier } = await this.send("Page.addScriptToEvaluateOnNewDocument", { source });
    return identifier;
  }

  /** Navigates and waits for the load event. */
  async navigate(url, timeoutMs = 30000) {
    const loaded = this.#nextLoad(timeoutMs);
    const result = await this.send("Page.navigate", { url });
    if (result.errorText) throw new Error(`navigate ${url}: ${result.errorText}`);
    await loaded;
  }

  /** Reloads and waits for the load event. */
  async reload(timeoutMs = 30000) {
    const loaded = this.#nextLoad(timeoutMs);
    await this.send("Page.reload", { ignoreCache: false });
    await loaded;
  }

  #nextLoad(timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no load event within ${timeoutMs} ms`)), timeoutMs);
      this.#loadWaiters.push(() => { clearTimeout(timer); resolve(); });
    });
  }

  /**
   * Evaluates `expression` (a string, or a function called with `args` serialised as JSON) in the
   * page, awaiting promises, and returns its value (JSON-serialisable results only).
   */
  async evaluate(expression, ...args) {
    const source = typeof expression === "function"
      ? `(${expression})(...${JSON.stringify(args)})`
      : expression;
    const { result, exceptionDetails } = await this.send("Runtime.evaluate", {
      expression: source, awaitPromise: true, returnByValue: true, userGesture: true,
    });
    if (exceptionDetails) {
      const text = exceptionDetails.exception?.description ?? exceptionDetails.text;
      throw new Error(`evaluate failed: ${text}`);
    }
    return result.value;
  }

  /**
   * Polls `fn(...args)` in the page until it returns a truthy value (returned), or throws after
   * `timeoutMs` with `what` and the last value in the message.
   */
  async waitFor(what, fn, { timeoutMs = 15000, intervalMs = 50, args = [] } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
      try {
        last = await this.evaluate(fn, ...args);
        if (last) return last;
      } catch (e) {
        last = e.message;  // e.g. during a navigation: the context is gone for a moment
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})\n` +
          `recent console:\n  ${this.console.slice(-15).join("\n  ")}`);
      }
      await sleep(intervalMs);
    }
  }

  /** Saves a PNG screenshot of the viewport to `path`. */
  async screenshot(path) {
    const { data } = await this.send("Page.captureScreenshot", { format: "png" });
    writeFileSync(path, Buffer.from(data, "base64"));
    return path;
  }

  /** Makes the tab the visible, focused one (a hidden tab's timers can be throttled). */
  async bringToFront() { await this.send("Page.bringToFront"); }

  /** Closes the tab (a real close: unload handlers run, Web Locks are released). */
  async close() {
    if (this.closed) return;
    await this.browser.send("Target.closeTarget", { targetId: this.targetId });
    this.closed = true;
  }
}
