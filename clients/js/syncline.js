// syncline.js: the browser client of Syncline protocol v1 (see clients/js/README.md).
// One plain ES module, no dependencies, no build step.
//
// Layout: pure parts first (errors, Decimal, JSON with exact numbers, keys, tokens, backoff),
// then the I/O-free state machine `SyncCore` (events in, actions out), then the thin shells
// (stores, WebSocket engine, tabs) and the public `connect`.

// ---------------------------------------------------------------------------------------------
// Errors

/** An error with a protocol code (`insufficient_funds`, `outcome_expired`, `client_id_in_use`, …). */
export class SynclineError extends Error {
  /** @param {string} code @param {string} [message] @param {any} [details] */
  constructor(code, message, details) {
    super(message || code);
    this.name = "SynclineError";
    /** @type {string} */ this.code = code;
    /** @type {any} */ this.details = details;
  }
  toJSON() { return { code: this.code, message: this.message, details: this.details }; }
}

// ---------------------------------------------------------------------------------------------
// Decimal: exact digits, BigInt-scaled arithmetic.

const DECIMAL_RE = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/;

/** An exact decimal number that keeps the digits it was written with (`1250.00`). */
export class Decimal {
  /** @param {string} text JSON number text */
  constructor(text) {
    const m = DECIMAL_RE.exec(String(text));
    if (!m) throw new SynclineError("bad_request", `not a decimal number: ${text}`);
    const frac = m[3] || "";
    let int = BigInt(m[2] + frac);
    let scale = frac.length - (m[4] ? parseInt(m[4], 10) : 0);
    if (scale < 0) { int *= 10n ** BigInt(-scale); scale = 0; }
    /** @private */ this._int = m[1] ? -int : int;
    /** @private */ this._scale = scale;
    /** @private */ this._text = String(text);
  }
  /** @param {number|string|bigint|Decimal} x @returns {Decimal} */
  static from(x) {
    if (x instanceof Decimal) return x;
    if (typeof x === "bigint") return new Decimal(x.toString());
    if (typeof x === "number") {
      if (!Number.isFinite(x)) throw new SynclineError("bad_request", `not a finite number: ${x}`);
      return new Decimal(String(x));
    }
    if (typeof x === "string") return new Decimal(x.trim());
    if (x && typeof x === "object" && typeof x._text === "string") return new Decimal(x._text);
    throw new SynclineError("bad_request", `not a number: ${x}`);
  }
  /** @private */
  static _of(int, scale) {
    const neg = int < 0n;
    let digits = (neg ? -int : int).toString();
    let text = digits;
    if (scale > 0) {
      digits = digits.padStart(scale + 1, "0");
      text = digits.slice(0, digits.length - scale) + "." + digits.slice(digits.length - scale);
    }
    return new Decimal((neg ? "-" : "") + text);
  }
  /** @private */
  _align(other) {
    const o = Decimal.from(other);
    const scale = Math.max(this._scale, o._scale);
    return [this._int * 10n ** BigInt(scale - this._scale), o._int * 10n ** BigInt(scale - o._scale), scale];
  }
  /** Exact sum, at the larger scale of the two. @param {number|string|Decimal} x */
  plus(x) { const [a, b, s] = this._align(x); return Decimal._of(a + b, s); }
  /** Exact difference, at the larger scale of the two. @param {number|string|Decimal} x */
  minus(x) { const [a, b, s] = this._align(x); return Decimal._of(a - b, s); }
  /** Exact product (scale = sum of scales). @param {number|string|Decimal} x */
  times(x) { const o = Decimal.from(x); return Decimal._of(this._int * o._int, this._scale + o._scale); }
  /** The negation. */
  negated() { return Decimal._of(-this._int, this._scale); }
  /** -1, 0 or 1. @param {number|string|Decimal} x */
  cmp(x) { const [a, b] = this._align(x); return a < b ? -1 : a > b ? 1 : 0; }
  /** Same value (ignoring scale: `1.50` equals `1.5`). @param {number|string|Decimal} x */
  equals(x) { return this.cmp(x) === 0; }
  isNegative() { return this._int < 0n; }
  isZero() { return this._int === 0n; }
  /** Digits after the point. */
  get scale() { return this._scale; }
  /** The exact digits as written (or as computed). */
  toString() { return this._text; }
  /** Sends the digits back verbatim (a raw JSON number where `JSON.rawJSON` exists). */
  toJSON() { return typeof JSON.rawJSON === "function" ? JSON.rawJSON(this._text) : this._text; }
  /** The nearest JS number (lossy). */
  valueOf() { return Number(this._text); }
  toNumber() { return Number(this._text); }
}

// ---------------------------------------------------------------------------------------------
// JSON with numbers that keep their digits.

/** A JSON number's text becomes a JS number when it round-trips through Number, else a Decimal. */
function numberFromText(text) {
  const n = Number(text);
  return String(n) === text ? n : new Decimal(text);
}

let nativeSourceChecked = false, nativeSource = false;
function hasNativeSource() {
  if (!nativeSourceChecked) {
    nativeSourceChecked = true;
    try { nativeSource = JSON.parse("[1.0]", (k, v, c) => (c && typeof c.source === "string" ? c.source : v))[0] === "1.0"; }
    catch { nativeSource = false; }
  }
  return nativeSource;
}

function parseNative(text) {
  return JSON.parse(text, (k, v, ctx) => (typeof v === "number" && ctx && typeof ctx.source === "string" ? numberFromText(ctx.source) : v));
}

/** A small JSON parser that keeps number text (used where JSON.parse has no reviver source). */
function parseFallback(text) {
  let i = 0;
  const s = String(text);
  const fail = (what) => { throw new SyntaxError(`JSON: ${what} at position ${i}`); };
  const ws = () => { while (i < s.length) { const c = s.charCodeAt(i); if (c === 32 || c === 9 || c === 10 || c === 13) i++; else break; } };
  const NUM = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  function value() {
    ws();
    const c = s[i];
    if (c === "{") {
      i++; const o = {}; ws();
      if (s[i] === "}") { i++; return o; }
      for (;;) {
        ws(); if (s[i] !== '"') fail("expected a string key");
        const k = str(); ws(); if (s[i] !== ":") fail("expected ':'"); i++;
        const v = value();
        if (k === "__proto__") Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
        else o[k] = v;
        ws();
        if (s[i] === ",") { i++; continue; }
        if (s[i] === "}") { i++; return o; }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++; const a = []; ws();
      if (s[i] === "]") { i++; return a; }
      for (;;) {
        a.push(value()); ws();
        if (s[i] === ",") { i++; continue; }
        if (s[i] === "]") { i++; return a; }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    if (s.startsWith("true", i)) { i += 4; return true; }
    if (s.startsWith("false", i)) { i += 5; return false; }
    if (s.startsWith("null", i)) { i += 4; return null; }
    NUM.lastIndex = i;
    const m = NUM.exec(s);
    if (!m) fail("unexpected character");
    i += m[0].length;
    return numberFromText(m[0]);
  }
  function str() {
    // Find the closing quote; let JSON.parse decode escapes of the string alone.
    let j = i + 1, esc = false;
    for (; j < s.length; j++) {
      const c = s.charCodeAt(j);
      if (c === 92) { esc = true; j++; continue; }
      if (c === 34) break;
      if (c < 32) fail("control character in string");
    }
    if (j >= s.length) fail("unterminated string");
    const raw = s.slice(i, j + 1);
    i = j + 1;
    return esc ? JSON.parse(raw) : raw.slice(1, -1);
  }
  const v = value(); ws();
  if (i !== s.length) fail("unexpected text after the value");
  return v;
}

/** Parses JSON; numbers that do not round-trip through Number become Decimal. @param {string} text */
export function parseJSON(text) { return hasNativeSource() ? parseNative(text) : parseFallback(text); }

function stringifyFallback(value) {
  const out = [];
  const write = (v, inArray) => {
    if (v instanceof Decimal) { out.push(v.toString()); return true; }
    if (v && typeof v.toJSON === "function") v = v.toJSON();
    if (v instanceof Decimal) { out.push(v.toString()); return true; }
    switch (typeof v) {
      case "string": out.push(JSON.stringify(v)); return true;
      case "number": out.push(Number.isFinite(v) ? String(v) : "null"); return true;
      case "boolean": out.push(v ? "true" : "false"); return true;
      case "bigint": out.push(v.toString()); return true;
      case "undefined": case "function": case "symbol":
        if (inArray) { out.push("null"); return true; }
        return false;
    }
    if (v === null) { out.push("null"); return true; }
    if (typeof JSON.isRawJSON === "function" && JSON.isRawJSON(v)) { out.push(v.rawJSON); return true; }
    if (Array.isArray(v)) {
      out.push("[");
      v.forEach((x, n) => { if (n) out.push(","); write(x, true); });
      out.push("]");
      return true;
    }
    out.push("{");
    let first = true;
    for (const k of Object.keys(v)) {
      const mark = out.length;
      out.push(first ? "" : ",", JSON.stringify(k), ":");
      if (write(v[k], false)) first = false; else out.length = mark;
    }
    out.push("}");
    return true;
  };
  return write(value, false) ? out.join("") : undefined;
}

function stringifyNative(value) {
  return JSON.stringify(value, (k, v) => (typeof v === "bigint" ? JSON.rawJSON(v.toString()) : v));
}

/** JSON text with Decimal digits sent verbatim (JSON.rawJSON where available, else own serializer). */
export function stringifyJSON(value) {
  return typeof JSON.rawJSON === "function" ? stringifyNative(value) : stringifyFallback(value);
}

// ---------------------------------------------------------------------------------------------
// Keys, matching, tokens, backoff

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object" && !(v instanceof Decimal)) {
    const o = {};
    for (const k of Object.keys(v).sort()) o[k] = sortKeys(v[k]);
    return o;
  }
  return v;
}

/** JSON of a key object with sorted field names (a string is returned as it is). @param {object|string} key */
export function keyString(key) {
  if (typeof key === "string") return key;
  return stringifyJSON(sortKeys(key));
}

function pick(row, cols) {
  const k = {};
  for (const c of cols) k[c] = row[c];
  return k;
}

function scalarEq(a, b) {
  if (a === null || a === undefined || b === null || b === undefined) return (a ?? null) === (b ?? null);
  if (a instanceof Decimal || b instanceof Decimal) {
    if ((typeof a === "number" || a instanceof Decimal) && (typeof b === "number" || b instanceof Decimal)) return Decimal.from(a).cmp(b) === 0;
    return String(a) === String(b);
  }
  return a === b;
}

/** Does a row satisfy a subscription's `where` (all columns equal; null = IS NULL)? */
export function matchesWhere(where, row) {
  if (!where) return true;
  for (const k of Object.keys(where)) if (!scalarEq(row[k], where[k])) return false;
  return true;
}

function b64urlDecode(s) {
  s = s.replace(/-/g, "+").replace(/_/g, "/");
  while (s.length % 4) s += "=";
  const bin = atob(s);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/** The claims of a JWT (unverified), or null when it does not decode. @param {string} token */
export function decodeToken(token) {
  try {
    const part = String(token).split(".")[1];
    const claims = JSON.parse(b64urlDecode(part));
    return claims && typeof claims === "object" ? claims : null;
  } catch { return null; }
}

/** When to refresh a token expiring at `expMs`: 30 s or 10 % of its remaining life before, whichever is less. */
export function tokenRefreshDelay(expMs, nowMs) {
  const life = expMs - nowMs;
  if (life <= 0) return 0;
  return Math.max(0, life - Math.min(30_000, life * 0.1));
}

/** Full-jitter exponential backoff: uniform in [0, min(cap, base·2^attempt)). */
export function backoffDelay(attempt, { baseMs = 250, capMs = 10_000 } = {}, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** A feed's identity: the same collection + where (or topic) shares one server feed. */
export function feedKeyOf(spec) {
  // A conflating feed (protocol §3.8) is its own feed: holders that want every change keep theirs.
  return spec.topic !== undefined ? `t:${spec.topic}`
    : `c:${spec.collection}:${keyString(spec.where || {})}${spec.conflate ? ":conflate" : ""}`;
}

// ---------------------------------------------------------------------------------------------
// SyncCore: the leader's I/O-free state machine.
//
// Methods take one event each and return the actions it causes:
//   {type:"open", gen} {type:"send", msg} {type:"closeSocket", gen, code, reason}
//   {type:"setTimer", name, ms} {type:"clearTimer", name} {type:"fetchToken"}
//   {type:"persist", ticket, ops} {type:"publish", feed, changes, reset, pending, ready}
//   {type:"message", feed, topic, payload, cursor} {type:"status", status}
//   {type:"outcome", id, mid, name, args, origin, ok, result?, error?} {type:"accepted", id, mid, origin}
//   {type:"feedError", feed, error} {type:"error", error}
//
// The double-count rule lives in `_confirmed`/`_flush`: while any mutation is in doubt (sent at
// least once, or reloaded, and not answered), confirmed data is buffered; it is published together
// with the answer that leaves nothing in doubt, and that publish drops the answered overlays. So the
// app sees an effect either as overlay or as confirmed row, never both, never neither.

const RETRIABLE_MUTATION_ERRORS = new Set(["unavailable", "rate_limited", "out_of_order", "internal"]);
const ENDING_FEED_ERRORS = new Set(["forbidden", "not_found", "bad_request"]);

function randomHex(n, random) {
  let s = "";
  const c = globalThis.crypto;
  if (c && c.getRandomValues && random === Math.random) {
    const b = c.getRandomValues(new Uint8Array(Math.ceil(n / 2)));
    for (const x of b) s += x.toString(16).padStart(2, "0");
    return s.slice(0, n);
  }
  while (s.length < n) s += Math.floor(random() * 16).toString(16);
  return s;
}

function rowEq(a, b) {
  if (a === b) return true;
  if (!a || !b) return false;
  return stringifyJSON(a) === stringifyJSON(b);
}

export class SyncCore {
  /**
   * @param {object} o
   * @param {{clientId?:string, nextMid?:number, mutations?:any[], feeds?:any[]}} [o.stored] what the store loaded
   * @param {Record<string, Function>} [o.mutators] optimistic effects by mutator name
   * @param {Record<string, string[]>} [o.keys] key columns per collection (default learned, else ["id"])
   * @param {{baseMs?:number, capMs?:number}} [o.backoff]
   * @param {number} [o.heartbeatMs] overrides welcome.heartbeat_ms
   * @param {number} [o.maxInFlight] mutations sent but unanswered at most (default 64)
   * @param {number} [o.maxMessageBytes] a mutate larger than this fails at once (default 1 MiB, the server's default)
   * @param {() => number} [o.now] @param {() => number} [o.random]
   */
  constructor(o = {}) {
    this.now = o.now || (() => Date.now());
    this.random = o.random || Math.random;
    this.mutators = o.mutators || {};
    this.mutatorsFn = o.mutatorsFn || null;
    this.keyCols = Object.assign({}, o.keys || {});
    this.backoff = { baseMs: 250, capMs: 10_000, ...(o.backoff || {}) };
    this.heartbeatOverride = o.heartbeatMs;
    this.maxInFlight = o.maxInFlight || 64;
    this.maxMessageBytes = o.maxMessageBytes || 1_048_576; // the server's --max-message-bytes default
    const st = o.stored || {};
    this.out = [];
    this.idSeq = 0;
    this.ticket = 0;
    this.persistedTicket = 0;
    this.clientId = st.clientId || "web-" + randomHex(20, this.random);
    this.nextMid = st.nextMid || 1;
    /** undecided mutations, in mid order */
    this.queue = (st.mutations || []).slice().sort((a, b) => a.mid - b.mid).map((m) => ({
      id: m.id, mid: m.mid, name: m.name, args: m.args, origin: m.origin || null,
      ticket: 0, sent: true, sentGen: null, earlier: true,
    }));
    if (this.queue.length) this.nextMid = Math.max(this.nextMid, this.queue[this.queue.length - 1].mid + 1);
    /** answered (ack/outcome_expired) but their overlay is kept until the buffer is published */
    this.decided = [];
    /** confirmed data not yet published (something was in doubt) */
    this.buffer = [];
    this.stored = new Map();
    for (const f of st.feeds || []) {
      this.stored.set(f.key, f);
      if (f.keyCols && f.spec && f.spec.collection && !this.keyCols[f.spec.collection]) this.keyCols[f.spec.collection] = f.keyCols;
    }
    /** @type {Map<string, any>} active feeds by feed key */
    this.feeds = new Map();
    this.holders = new Map(); // holder -> feed key
    this.subIds = new Map(); // server sub id -> feed (current connection)
    this.subSeq = 0;
    this.gen = 0;
    this.phase = "idle"; // idle | token | opening | hello | open | closed | stopped
    this.everOpen = false;
    this.attempt = 0;
    this.refused4001 = 0;
    this.mutationAttempt = 0;
    this.holdMutations = false;
    this.token = null;
    this.tokenExpMs = null;
    this.tokenFetching = false;
    this.tokenWanted = null; // "connect" | "refresh"
    this.heartbeatMs = 15_000;
    this.stopped = false;
    this.lastStatus = null;
    if (!st.clientId) this._persist([["meta", { clientId: this.clientId, nextMid: this.nextMid }]]);
  }

  _take() { const a = this.out; this.out = []; return a; }
  _emit(a) { this.out.push(a); }
  _persist(ops) { if (!ops.length) return this.ticket; const ticket = ++this.ticket; this._emit({ type: "persist", ticket, ops }); return ticket; }
  _timer(name, ms) { this._emit({ type: "setTimer", name, ms: Math.max(0, Math.round(ms)) }); }
  _clearTimer(name) { this._emit({ type: "clearTimer", name }); }
  _send(msg) { this._emit({ type: "send", msg }); }
  _error(code, message, details) { this._emit({ type: "error", error: new SynclineError(code, message, details) }); }

  // ----- lifecycle -------------------------------------------------------------------------

  /** Start connecting. A token already fetched by the caller may be handed in. */
  start(token) {
    if (token) this._takeToken(token);
    this._connect();
    this._status();
    return this._take();
  }

  /** Stop for good (close or logout): no reconnect. */
  stop() {
    this.stopped = true;
    for (const t of ["reconnect", "idle", "pong", "token", "resend"]) this._clearTimer(t);
    for (const f of this.feeds.values()) this._clearTimer("feed:" + f.key);
    if (this.phase === "opening" || this.phase === "hello" || this.phase === "open") this._emit({ type: "closeSocket", gen: this.gen, code: 1000, reason: "client closed" });
    this.phase = "stopped";
    this._status();
    return this._take();
  }

  /** The network came back (browser `online`): skip the backoff wait. */
  wake() {
    if (!this.stopped && (this.phase === "closed" || this.phase === "idle")) { this._clearTimer("reconnect"); this._connect(); this._status(); }
    return this._take();
  }

  /** @param {boolean} [fresh] the token was just fetched: use it even if it looks expired (the server decides). */
  _connect(fresh = false) {
    if (this.stopped) return;
    if (!this.token || (!fresh && this.tokenExpMs !== null && this.tokenExpMs - this.now() < 5_000)) {
      this.phase = "token";
      this._fetchToken("connect");
      return;
    }
    this.gen++;
    this.phase = "opening";
    this._emit({ type: "open", gen: this.gen });
  }

  _fetchToken(why) {
    this.tokenWanted = this.tokenWanted === "connect" ? "connect" : why;
    if (this.tokenFetching) return;
    this.tokenFetching = true;
    this._emit({ type: "fetchToken" });
  }

  _takeToken(token) {
    this.token = token;
    const claims = decodeToken(token);
    this.tokenExpMs = claims && typeof claims.exp === "number" ? claims.exp * 1000 : null;
    // A token that is (nearly) expired already is not refetched in a loop: at most every 5 s.
    if (this.tokenExpMs !== null) this._timer("token", Math.max(tokenRefreshDelay(this.tokenExpMs, this.now()), this.tokenExpMs - this.now() < 5_000 ? 5_000 : 1_000));
  }

  /** getToken() resolved. */
  tokenFetched(token) {
    this.tokenFetching = false;
    const why = this.tokenWanted;
    this.tokenWanted = null;
    if (this.stopped) return this._take();
    this._takeToken(token);
    if (this.phase === "open") this._send({ type: "auth", token });
    if (why === "connect" && this.phase === "token") this._connect(true);
    this._status();
    return this._take();
  }

  /** getToken() failed (offline, server down): retry with backoff. */
  tokenFailed(error) {
    this.tokenFetching = false;
    const why = this.tokenWanted;
    this.tokenWanted = null;
    if (this.stopped) return this._take();
    if (why === "connect" || this.phase === "token") {
      this.phase = "closed";
      this.everFailed = true;
      this._timer("reconnect", backoffDelay(this.attempt++, this.backoff, this.random));
    } else {
      this._timer("token", Math.min(5_000, Math.max(0, (this.tokenExpMs ?? 0) - this.now())));
    }
    this._status();
    return this._take();
  }

  /** A timer set by setTimer fired. */
  timerFired(name) {
    if (this.stopped) return this._take();
    if (name === "reconnect") { if (this.phase === "closed" || this.phase === "idle") this._connect(); }
    else if (name === "token") this._fetchToken("refresh");
    else if (name === "idle") { if (this.phase === "open") { this._send({ type: "ping" }); this._timer("pong", this.heartbeatMs); } }
    else if (name === "pong") { if (this.phase === "open" || this.phase === "hello") this._lost(1006, "no pong within heartbeat_ms", true); }
    else if (name === "resend") { this.holdMutations = false; this._pump(); }
    else if (name.startsWith("feed:")) {
      const f = this.feeds.get(name.slice(5));
      if (f && f.phase === "waiting" && this.phase === "open") this._subscribeFeed(f);
    }
    this._status();
    return this._take();
  }

  /** The store committed every write up to `ticket`. */
  persisted(ticket) {
    if (ticket > this.persistedTicket) this.persistedTicket = ticket;
    this._pump();
    return this._take();
  }

  // ----- socket ------------------------------------------------------------------------------

  socketOpened(gen) {
    if (gen !== this.gen || this.phase !== "opening") return this._take();
    this.phase = "hello";
    const hello = { type: "hello", client_id: this.clientId };
    if (this.token) hello.token = this.token;
    this._send(hello);
    this._timer("pong", Math.max(this.heartbeatOverride || 0, 15_000) * 2); // no welcome at all: give up on this socket
    return this._take();
  }

  socketClosed(gen, code, reason) {
    if (gen !== this.gen || this.stopped) return this._take();
    if (this.phase === "closed") return this._take();
    this._lost(code, reason, false);
    this._status();
    return this._take();
  }

  /** The connection is gone (closed by the server, the network, or given up by us). */
  _lost(code, reason, weClose) {
    if (weClose) this._emit({ type: "closeSocket", gen: this.gen, code: 4000, reason: String(reason || "") });
    this.phase = "closed";
    this._clearTimer("idle"); this._clearTimer("pong");
    this.subIds.clear();
    for (const f of this.feeds.values()) {
      if (f.phase !== "ended") { f.phase = "idle"; f.collected = null; f.subId = null; f.live = false; this._clearTimer("feed:" + f.key); }
    }
    for (const m of this.queue) m.sentGen = null;
    this.holdMutations = false; this._clearTimer("resend");
    let delay;
    switch (code) {
      case 1001: case 4008: delay = 0; break; // shutdown / too slow: resume at once (another node)
      case 4001: // token invalid or expired (or a server restarted with new keys): a fresh one, then reconnect
        this.token = null;
        // At once the first time since the last welcome, however long the outage before was;
        // back off only when fresh tokens keep being refused.
        delay = this.refused4001++ > 0 ? backoffDelay(this.attempt, this.backoff, this.random) : 0;
        this.attempt++;
        break;
      case 4003:
        this.stopped = true; this.phase = "stopped";
        this._error("forbidden", `closed 4003: ${reason || "client_id owned by another user, or auth with another sub"}`, { close: code });
        return;
      case 1008: case 1009: case 4400:
        this._error(code === 1009 ? "message_too_big" : code === 4400 ? "protocol_violation" : "policy_violation", `closed ${code}: ${reason || ""}`, { close: code });
        delay = backoffDelay(this.attempt++, this.backoff, this.random) + this.backoff.capMs;
        break;
      default: // 1000, 1006, 1011, 1013, anything else: backoff and resume
        delay = backoffDelay(this.attempt++, this.backoff, this.random);
    }
    this.everFailed = true;
    this._timer("reconnect", delay);
  }

  /** One parsed message from the server. */
  socketMessage(gen, msg) {
    if (gen !== this.gen || this.stopped || !msg || typeof msg !== "object") return this._take();
    if (this.phase === "open") { this._clearTimer("pong"); this._timer("idle", this.heartbeatMs); }
    switch (msg.type) {
      case "welcome": this._welcome(msg); break;
      case "pong": break;
      case "subscribed": this._subscribed(msg); break;
      case "snapshot": this._snapshot(msg); break;
      case "changes": this._changes(msg); break;
      case "message": this._message(msg); break;
      case "unsubscribed": break;
      case "revoked": this._revoked(msg); break;
      case "ack": this._ack(msg); break;
      case "reject": this._reject(msg); break;
      case "error": this._errorMsg(msg); break;
      default: break; // unknown types are ignored (forward compatibility)
    }
    this._status();
    return this._take();
  }

  _welcome(msg) {
    if (this.phase !== "hello") return;
    this.phase = "open";
    this.everOpen = true;
    this.refused4001 = 0;
    this.heartbeatMs = this.heartbeatOverride || msg.heartbeat_ms || 15_000;
    this._clearTimer("pong");
    this._timer("idle", this.heartbeatMs);
    const lastMid = typeof msg.last_mid === "number" ? msg.last_mid : 0;
    const assigned = this.nextMid - 1;
    if (lastMid > assigned) {
      // Mids this client never assigned were decided: another device (or a lost store) uses this id.
      this.stopped = true;
      this.phase = "stopped";
      this._emit({ type: "closeSocket", gen: this.gen, code: 1000, reason: "client_id in use elsewhere" });
      this._error("client_id_in_use", `the server has decided mid ${lastMid} but this client assigned only up to ${assigned}`, { last_mid: lastMid, assigned });
      return;
    }
    const ops = [];
    if (this.queue.length && this.queue[0].mid > lastMid + 1) {
      // The database was restored to a point before our mids: renumber from last_mid + 1.
      let mid = lastMid + 1;
      const ticket = this.ticket + 1;
      for (const m of this.queue) { m.mid = mid++; m.ticket = ticket; ops.push(["putMutation", this._record(m)]); }
      this.nextMid = mid;
      ops.push(["meta", { clientId: this.clientId, nextMid: this.nextMid }]);
    } else if (!this.queue.length && !this.decided.length && assigned > lastMid) {
      this.nextMid = lastMid + 1;
      ops.push(["meta", { clientId: this.clientId, nextMid: this.nextMid }]);
    }
    this._persist(ops);
    // Resubscribe first, then resend undecided mutations in mid order.
    for (const f of this.feeds.values()) if (f.phase !== "ended") this._subscribeFeed(f);
    this._pump();
  }

  // ----- feeds -------------------------------------------------------------------------------

  /**
   * A holder (one LiveQuery handle, possibly in another tab) wants a feed (key: feedKeyOf(spec)).
   * @returns {any[]} actions
   */
  subscribe(holder, spec) {
    const key = feedKeyOf(spec);
    const had = this.holders.get(holder);
    if (had === key) return this._take();
    if (had !== undefined) this._unsubscribe(holder);
    this.holders.set(holder, key);
    let f = this.feeds.get(key);
    if (f) { f.holders.add(holder); return this._take(); }
    const stored = this.stored.get(key);
    f = {
      key, spec: spec.topic !== undefined ? { topic: spec.topic }
        : { collection: spec.collection, where: spec.where || {}, ...(spec.conflate ? { conflate: true } : {}) },
      holders: new Set([holder]), cursor: null, pubCursor: null, base: new Map(), view: new Map(), pending: new Set(),
      subId: null, phase: "idle", collected: null, live: false, ready: false, error: null, attempts: 0, triedFresh: false,
    };
    if (stored) {
      f.cursor = f.pubCursor = stored.cursor;
      for (const [k, row] of stored.rows || []) f.base.set(k, row);
      f.ready = stored.cursor != null;
    }
    this.feeds.set(key, f);
    if (f.spec.collection !== undefined && spec.key && !this.keyCols[f.spec.collection]) this.keyCols[f.spec.collection] = spec.key;
    if (f.ready) this._publish(new Map([[f, "all"]]));
    if (this.phase === "open") this._subscribeFeed(f);
    this._status();
    return this._take();
  }

  unsubscribe(holder) { this._unsubscribe(holder); this._status(); return this._take(); }

  /**
   * @param {boolean} [keepStored] the holder's tab went away (not the app's unsubscribe): keep the
   *   feed's stored rows and cursor, so that tab's reload starts warm (also offline).
   */
  _unsubscribe(holder, keepStored = false) {
    const key = this.holders.get(holder);
    if (key === undefined) return;
    this.holders.delete(holder);
    const f = this.feeds.get(key);
    if (f) {
      f.holders.delete(holder);
      if (!f.holders.size) {
        this.feeds.delete(key);
        this._clearTimer("feed:" + key);
        if (f.subId !== null) { this.subIds.delete(f.subId); if (this.phase === "open") this._send({ type: "unsubscribe", id: f.subId }); }
        if (keepStored && f.spec.collection !== undefined && f.pubCursor != null) {
          // What is stored is what was published: the base rows at pubCursor.
          this.stored.set(key, { key, spec: f.spec, cursor: f.pubCursor, keyCols: this.keyCols[f.spec.collection] || null, rows: [...f.base] });
        } else if (keepStored && f.spec.topic !== undefined && f.pubCursor != null) {
          this.stored.set(key, { key, spec: f.spec, cursor: f.pubCursor, rows: [] });
        } else {
          this.stored.delete(key);
          this._persist([["deleteFeed", key]]);
        }
      }
    }
  }

  /** Drop every holder whose id starts with `prefix` (a tab that went away); their feeds stay stored. */
  unsubscribePrefix(prefix) {
    for (const h of [...this.holders.keys()]) if (h.startsWith(prefix)) this._unsubscribe(h, true);
    this._status();
    return this._take();
  }

  /** The published state of a feed (for a tab that joins). */
  feedState(key) {
    const f = this.feeds.get(key);
    if (!f) return null;
    return { rows: [...f.view.entries()], pending: [...f.pending], ready: f.ready, error: f.error, live: f.live };
  }

  _subscribeFeed(f) {
    const id = "f" + (++this.subSeq);
    if (f.subId !== null) this.subIds.delete(f.subId);
    f.subId = id;
    f.phase = "subscribing";
    f.collected = null;
    f.live = false;
    this.subIds.set(id, f);
    const msg = { type: "subscribe", id };
    if (f.spec.topic !== undefined) msg.topic = f.spec.topic;
    else {
      msg.collection = f.spec.collection;
      if (Object.keys(f.spec.where).length) msg.where = f.spec.where;
      if (f.spec.conflate) msg.conflate = true;
    }
    if (f.cursor != null) msg.after = f.cursor;
    this._send(msg);
  }

  _feedFor(id) { return typeof id === "string" ? this.subIds.get(id) : undefined; }

  _subscribed(msg) {
    const f = this._feedFor(msg.id);
    if (!f) return;
    if (msg.mode === "resume") { f.phase = "catchup"; f.collected = null; }
    else { f.phase = "snapshot"; f.collected = []; f.live = false; }
  }

  _snapshot(msg) {
    const f = this._feedFor(msg.sub);
    if (!f) return;
    if (!f.collected) f.collected = [];
    for (const r of msg.rows || []) f.collected.push(r);
    if (!msg.done) return;
    const rows = f.collected;
    f.collected = null;
    f.phase = "catchup";
    f.cursor = msg.cursor;
    if (f.spec.topic !== undefined) { this._topicCursor(f, msg.cursor); return; }
    this._confirmed({ feed: f, kind: "replace", rows, cursor: msg.cursor, live: false });
  }

  _changes(msg) {
    const f = this._feedFor(msg.sub);
    if (!f || f.phase === "snapshot") return;
    f.cursor = msg.cursor;
    f.phase = msg.live ? "live" : f.phase;
    if (msg.live) f.attempts = 0;
    if (f.spec.topic !== undefined) { if (msg.live) f.live = true; this._topicCursor(f, msg.cursor); return; }
    const changes = Array.isArray(msg.changes) ? msg.changes : [];
    for (const c of changes) this._learnKey(f.spec.collection, c.key);
    this._confirmed({ feed: f, kind: "changes", changes, cursor: msg.cursor, live: !!msg.live });
  }

  _message(msg) {
    const f = this._feedFor(msg.sub);
    if (!f || f.spec.topic === undefined) return;
    f.cursor = msg.cursor;
    this._emit({ type: "message", feed: f.key, topic: msg.topic, payload: msg.payload, cursor: msg.cursor });
    this._topicCursor(f, msg.cursor);
  }

  _topicCursor(f, cursor) {
    f.pubCursor = cursor;
    f.ready = true;
    this._persist([["putFeed", { key: f.key, spec: f.spec, cursor }]]);
  }

  _revoked(msg) {
    const f = this._feedFor(msg.sub);
    if (!f) return;
    this._endFeed(f, new SynclineError(msg.code || "forbidden", msg.message || "feed revoked"));
  }

  _endFeed(f, error) {
    this.subIds.delete(f.subId);
    f.subId = null;
    f.phase = "ended";
    f.error = error;
    f.collected = null;
    this._emit({ type: "feedError", feed: f.key, error });
  }

  _feedError(f, msg) {
    const code = msg.code;
    if (code === "bad_request" && f.cursor != null && !f.triedFresh) {
      // Our cursor was refused (garbage or beyond the newest position): start over with a snapshot.
      f.triedFresh = true;
      f.cursor = null;
      this._subscribeFeed(f);
      return;
    }
    if (ENDING_FEED_ERRORS.has(code)) { this._endFeed(f, new SynclineError(code, msg.message, msg.details)); return; }
    // duplicate_id, rate_limited, unavailable, internal, unknown: resubscribe from the cursor later.
    this.subIds.delete(f.subId);
    f.subId = null;
    f.phase = "waiting";
    f.collected = null;
    const delay = typeof msg.retry_after_ms === "number" ? msg.retry_after_ms : backoffDelay(f.attempts++, this.backoff, this.random);
    this._timer("feed:" + f.key, delay);
  }

  _learnKey(collection, key) {
    if (!key || typeof key !== "object") return;
    const cols = Object.keys(key).sort();
    const had = this.keyCols[collection];
    if (had && had.length === cols.length && had.every((c, i) => c === cols[i])) return;
    this.keyCols[collection] = cols;
    // Re-key what we hold for this collection under the columns the server uses.
    const changed = new Map();
    for (const f of this.feeds.values()) {
      if (f.spec.collection !== collection) continue;
      const base = new Map();
      let moved = false;
      for (const [k, row] of f.base) { const nk = keyString(pick(row, cols)); if (nk !== k) moved = true; base.set(nk, row); }
      f.base = base;
      if (moved) changed.set(f, "all");
    }
    if (changed.size) this._publish(changed);
  }

  _keyColsOf(collection, row) {
    const k = this.keyCols[collection];
    if (k) return k;
    if (row && "id" in row) return ["id"];
    return row ? Object.keys(row).sort() : ["id"];
  }

  _rowKey(collection, row) { return keyString(pick(row, this._keyColsOf(collection, row))); }

  // ----- confirmed data, buffering, publishing -----------------------------------------------

  _inDoubt() { return this.queue.some((m) => m.sent); }

  _confirmed(entry) {
    if (this._inDoubt() || this.buffer.length) { this.buffer.push(entry); return; }
    this._flush([entry]);
  }

  /** Apply confirmed entries to the published base, persist them with the queue, publish once. */
  _flush(entries) {
    const changed = new Map();
    const ops = [];
    const touchedFeeds = new Set();
    for (const e of entries) {
      const f = e.feed;
      if (this.feeds.get(f.key) !== f) continue; // unsubscribed meanwhile
      const coll = f.spec.collection;
      if (e.kind === "replace") {
        const base = new Map();
        for (const r of e.rows) base.set(this._rowKey(coll, r), r);
        f.base = base;
        changed.set(f, "all");
        f.ready = true;
        f.rowOps = ["clear"]; // rewrite all rows in the store
      } else {
        let set = changed.get(f);
        if (set !== "all") { if (!set) { set = new Set(); changed.set(f, set); } }
        for (const c of e.changes) {
          if (!c || !c.key) continue;
          const k = keyString(c.key);
          if (c.op === "delete") f.base.delete(k);
          else if (c.op === "insert" || c.op === "update") { if (!c.row) continue; f.base.set(k, c.row); }
          else continue;
          if (set !== "all") set.add(k);
          if (f.rowOps && f.rowOps[0] !== "clear") f.rowOps.push(k); else if (!f.rowOps) f.rowOps = [k];
        }
      }
      if (e.live) { f.live = true; f.attempts = 0; }
      f.pubCursor = e.cursor;
      touchedFeeds.add(f);
    }
    for (const f of touchedFeeds) {
      const rowOps = f.rowOps || [];
      f.rowOps = null;
      if (rowOps[0] === "clear") {
        ops.push(["clearRows", f.key]);
        for (const [k, row] of f.base) ops.push(["putRow", f.key, k, row]);
      } else {
        for (const k of new Set(rowOps)) {
          const row = f.base.get(k);
          ops.push(row === undefined ? ["deleteRow", f.key, k] : ["putRow", f.key, k, row]);
        }
      }
      ops.push(["putFeed", { key: f.key, spec: f.spec, cursor: f.pubCursor, keyCols: this.keyCols[f.spec.collection] || null }]);
    }
    for (const m of this.decided) ops.push(["deleteMutation", m.id]);
    this.decided = [];
    this._persist(ops);
    this._publish(changed);
  }

  /** Everything whose effect is shown as overlay, in mid order. */
  _overlayList() {
    const all = this.decided.concat(this.queue);
    return all.sort((a, b) => a.mid - b.mid);
  }

  _computeOverlay() {
    /** @type {Map<string, Map<string, any>>} collection -> key -> row | null (deleted) */
    const work = new Map();
    const core = this;
    for (const m of this._overlayList()) {
      const fn = (this.mutatorsFn ? this.mutatorsFn() : this.mutators)[m.name];
      if (typeof fn !== "function") continue;
      const stage = new Map();
      let inserted = 0;
      const layer = (c, create) => { let l = stage.get(c); if (!l && create) { l = new Map(); stage.set(c, l); } return l; };
      const lookup = (c, k) => {
        const s = stage.get(c); if (s && s.has(k)) return s.get(k);
        const w = work.get(c); if (w && w.has(k)) return w.get(k);
        for (const f of core.feeds.values()) if (f.spec.collection === c && f.base.has(k)) return f.base.get(k);
        return undefined;
      };
      const copy = (r) => (r ? { ...r } : r);
      const view = {
        get(c, key) { const r = lookup(c, keyString(key)); return r ? copy(r) : undefined; },
        all(c) {
          const seen = new Map();
          for (const f of core.feeds.values()) if (f.spec.collection === c) for (const [k, r] of f.base) if (!seen.has(k)) seen.set(k, r);
          for (const l of [work.get(c), stage.get(c)]) if (l) for (const [k, r] of l) seen.set(k, r);
          return [...seen.values()].filter(Boolean).map(copy);
        },
        insert(c, row) {
          const r = { ...row };
          const cols = core.keyCols[c] || ["id"];
          if (cols.some((col) => r[col] === undefined)) {
            if (cols.length === 1) r[cols[0]] = `pending:${m.mid}:${++inserted}`;
            else throw new SynclineError("invalid", `insert into ${c} needs its key columns ${cols.join(", ")}`);
          }
          layer(c, true).set(keyString(pick(r, cols)), r);
          return copy(r);
        },
        update(c, key, patch) {
          const k = keyString(key);
          const cur = lookup(c, k);
          if (!cur) return undefined;
          const next = typeof patch === "function" ? patch({ ...cur }) : { ...cur, ...patch };
          if (!next) return undefined;
          layer(c, true).set(k, next);
          return copy(next);
        },
        delete(c, key) {
          const k = keyString(key);
          const had = lookup(c, k) !== undefined && lookup(c, k) !== null;
          layer(c, true).set(k, null);
          return had;
        },
      };
      try { fn(view, m.args); }
      catch (e) {
        if (!m.effectFailed) { m.effectFailed = true; this._error("mutator_failed", `optimistic effect of '${m.name}' (mid ${m.mid}) threw: ${e && e.message}`, { mid: m.mid }); }
        continue;
      }
      for (const [c, l] of stage) { let w = work.get(c); if (!w) { w = new Map(); work.set(c, w); } for (const [k, r] of l) w.set(k, r); }
    }
    return work;
  }

  /**
   * Recompute every row feed's view (base + overlay) and publish what changed.
   * @param {Map<any, Set<string>|"all">} changed base keys changed per feed
   */
  _publish(changed) {
    const overlay = this._computeOverlay();
    for (const f of this.feeds.values()) {
      if (f.spec.collection === undefined) continue;
      const coll = f.spec.collection;
      const ov = overlay.get(coll) || new Map();
      const ch = changed.get(f);
      const reset = ch === "all";
      let keys;
      if (reset) keys = new Set([...f.view.keys(), ...f.base.keys(), ...ov.keys()]);
      else keys = new Set([...(ch || []), ...f.pending, ...ov.keys()]);
      const changes = [];
      const pending = new Set();
      for (const k of keys) {
        let v;
        if (ov.has(k)) {
          const r = ov.get(k);
          v = r && matchesWhere(f.spec.where, r) ? r : undefined;
          if (v !== undefined || f.base.has(k)) pending.add(k);
        } else v = f.base.get(k);
        const old = f.view.get(k);
        // The change's key is the view's own key string parsed back, so mirrors stay in step.
        if (v === undefined) {
          if (old !== undefined) { f.view.delete(k); changes.push({ op: "delete", key: parseJSON(k), row: null }); }
        } else if (old === undefined) { f.view.set(k, v); changes.push({ op: "insert", key: parseJSON(k), row: v }); }
        else if (!rowEq(old, v)) { f.view.set(k, v); changes.push({ op: "update", key: parseJSON(k), row: v }); }
        else if (old !== v) f.view.set(k, v);
      }
      const pendingChanged = pending.size !== f.pending.size || [...pending].some((k) => !f.pending.has(k));
      f.pending = pending;
      const firstReady = f.ready && !f.readySent;
      if (changes.length || reset || pendingChanged || firstReady) {
        f.readySent = f.ready;
        this._emit({ type: "publish", feed: f.key, changes, reset, pending: [...pending], ready: f.ready });
      }
    }
  }

  // ----- mutations ---------------------------------------------------------------------------

  _record(m) { return { id: m.id, mid: m.mid, name: m.name, args: m.args, origin: m.origin }; }

  /**
   * Queue a mutation: stored before it is sent; its effect shown at once.
   * @returns {{id:string, mid:number, actions:any[]}}
   */
  mutate(name, args, origin = null) {
    if (origin) {
      const same = this.queue.concat(this.decided).find((m) => m.origin && m.origin.page === origin.page && m.origin.req === origin.req);
      if (same) { this._emit({ type: "accepted", id: same.id, mid: same.mid, origin }); return { id: same.id, mid: same.mid, actions: this._take() }; }
    }
    // One the server would refuse by closing 1009 on every resend would block the queue: fail it now.
    const bytes = new TextEncoder().encode(stringifyJSON({ type: "mutate", mid: this.nextMid, name, args: args ?? {} })).length;
    if (bytes > this.maxMessageBytes) {
      const error = new SynclineError("message_too_big", `mutate '${name}' is ${bytes} bytes, more than the ${this.maxMessageBytes} the server accepts`, { bytes, max: this.maxMessageBytes });
      this._emit({ type: "outcome", id: null, mid: null, name, args, origin, earlier: false, ok: false, error });
      return { id: null, mid: null, actions: this._take() };
    }
    const m = { id: `${this.now().toString(36)}-${++this.idSeq}-${randomHex(8, this.random)}`, mid: this.nextMid++, name, args: args ?? {}, origin, ticket: 0, sent: false, sentGen: null, earlier: false };
    m.ticket = this._persist([["putMutation", this._record(m)], ["meta", { clientId: this.clientId, nextMid: this.nextMid }]]);
    this.queue.push(m);
    this._publish(new Map());
    this._pump();
    this._status();
    return { id: m.id, mid: m.mid, actions: this._take() };
  }

  /** Send what may be sent: contiguous in mid order, stored first, not held by a retry wait. */
  _pump() {
    for (const m of this.queue) {
      if (m.ticket > this.persistedTicket) break;
      if (!m.acceptedSent) { m.acceptedSent = true; if (!m.earlier) this._emit({ type: "accepted", id: m.id, mid: m.mid, origin: m.origin }); }
    }
    if (this.phase !== "open" || this.holdMutations || this.stopped) return;
    let inFlight = 0;
    for (const m of this.queue) {
      if (m.sentGen === this.gen) { inFlight++; continue; }
      if (m.ticket > this.persistedTicket) {
        break;
      }
      if (inFlight >= this.maxInFlight) break;
      this._send({ type: "mutate", mid: m.mid, name: m.name, args: m.args });
      m.sentGen = this.gen;
      m.sent = true;
      inFlight++;
    }
  }

  _byMid(mid) { return this.queue.findIndex((m) => m.mid === mid); }

  _decide(i, outcome, keepOverlay) {
    const m = this.queue[i];
    this.queue.splice(i, 1);
    this.mutationAttempt = 0;
    this._emit({ type: "outcome", id: m.id, mid: m.mid, name: m.name, args: m.args, origin: m.origin, earlier: m.earlier, ...outcome });
    if (keepOverlay) this.decided.push(m);
    else this._persist([["deleteMutation", m.id]]);
    if (!this._inDoubt()) this._flush(this.buffer.splice(0));
    else if (!keepOverlay) this._publish(new Map());
    this._pump();
  }

  _ack(msg) {
    const i = this._byMid(msg.mid);
    if (i < 0) return; // an answer to a resend already answered
    // Its effect is in the feeds now (read-your-writes): drop the overlay when the buffer is published.
    this._decide(i, { ok: true, result: msg.result ?? null, duplicate: !!msg.duplicate, cursor: msg.cursor }, true);
  }

  _reject(msg) {
    const i = this._byMid(msg.mid);
    if (i < 0) return;
    // Rolled back: its effect is in no feed, so its overlay goes at once.
    this._decide(i, { ok: false, error: new SynclineError(msg.code || "rejected", msg.message, msg.details), duplicate: !!msg.duplicate }, false);
  }

  _errorMsg(msg) {
    if (typeof msg.ref === "string") {
      const f = this._feedFor(msg.ref);
      if (f) this._feedError(f, msg);
      return;
    }
    if (typeof msg.ref !== "number") { this._error(msg.code || "internal", msg.message || "server error", { retry_after_ms: msg.retry_after_ms }); return; }
    const i = this._byMid(msg.ref);
    if (i < 0) return;
    const m = this.queue[i];
    const code = msg.code;
    if (code === "outcome_expired") {
      // Decided long ago, outcome pruned: whatever it did is in the confirmed rows already.
      this._decide(i, { ok: false, error: new SynclineError("outcome_expired", msg.message || "outcome expired") }, true);
      return;
    }
    if (RETRIABLE_MUTATION_ERRORS.has(code) || !["bad_request", "conflict", "not_found", "forbidden", "invalid"].includes(code)) {
      // Not decided: resend from the first undecided mid, in order, after retry_after_ms.
      if (m.sentGen === null) return; // part of a cascade we already handle
      for (const x of this.queue) x.sentGen = null;
      this.holdMutations = true;
      const delay = typeof msg.retry_after_ms === "number" ? msg.retry_after_ms : backoffDelay(this.mutationAttempt++, this.backoff, this.random);
      this._timer("resend", delay);
      return;
    }
    // bad_request / conflict (mid reused with other args) and the like: a client-side problem.
    // Nothing was applied under this mid for us: fail it, and give the later ones its number.
    const error = new SynclineError(code, msg.message, msg.details);
    const consumed = code === "conflict"; // conflict: that mid is decided (with other args)
    this.queue.splice(i, 1);
    this._emit({ type: "outcome", id: m.id, mid: m.mid, name: m.name, args: m.args, origin: m.origin, earlier: m.earlier, ok: false, error });
    const ops = [["deleteMutation", m.id]];
    if (!consumed) {
      let mid = m.mid;
      const ticket = this.ticket + 1;
      for (const x of this.queue.slice(i)) { x.mid = mid++; x.ticket = ticket; ops.push(["putMutation", this._record(x)]); }
      this.nextMid = mid;
      ops.push(["meta", { clientId: this.clientId, nextMid: this.nextMid }]);
    }
    for (const x of this.queue) x.sentGen = null;
    this._persist(ops);
    if (!this._inDoubt()) this._flush(this.buffer.splice(0));
    else this._publish(new Map());
    this.holdMutations = true;
    this._timer("resend", 0);
  }

  // ----- status ------------------------------------------------------------------------------

  /** @returns {{state:string, pending:number}} */
  statusNow() {
    let state;
    if (this.phase === "open") {
      let live = true;
      for (const f of this.feeds.values()) if (f.phase !== "ended" && !f.live) { live = false; break; }
      state = live ? "live" : "resyncing";
    } else if (this.stopped || this.everFailed || this.everOpen) state = "offline";
    else state = "connecting";
    return { state, pending: this.queue.length };
  }

  _status() {
    const s = this.statusNow();
    if (s.state === "live") this.attempt = 0;
    if (!this.lastStatus || this.lastStatus.state !== s.state || this.lastStatus.pending !== s.pending) {
      this.lastStatus = s;
      this._emit({ type: "status", status: s });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Stores. Both take the core's persist ops; rows and args are kept as JSON text so Decimal digits
// survive (IndexedDB's structured clone would turn a Decimal into a plain object).

function decodeStored(meta, mutations, feeds, rowPairs) {
  const byFeed = new Map();
  for (const [feedKey, k, text] of rowPairs) {
    let l = byFeed.get(feedKey);
    if (!l) { l = []; byFeed.set(feedKey, l); }
    l.push([k, parseJSON(text)]);
  }
  return {
    clientId: meta ? meta.clientId : undefined,
    nextMid: meta ? meta.nextMid : undefined,
    mutations: mutations.map((m) => ({ id: m.id, mid: m.mid, name: m.name, args: parseJSON(m.args), origin: m.origin || null })),
    feeds: feeds.map((f) => ({ key: f.key, spec: parseJSON(f.spec), cursor: f.cursor ?? null, keyCols: f.keyCols || null, rows: byFeed.get(f.key) || [] })),
  };
}

function encodeOp(op) {
  switch (op[0]) {
    case "putMutation": return ["putMutation", { ...op[1], args: stringifyJSON(op[1].args) }];
    case "putFeed": return ["putFeed", { ...op[1], spec: stringifyJSON(op[1].spec) }];
    case "putRow": return ["putRow", op[1], op[2], stringifyJSON(op[3])];
    default: return op;
  }
}

/** A store in memory (for `storage: "memory"` and tests): same ops, same encoding, no durability. */
export class MemoryStore {
  constructor() { this.wipe(); }
  wipe() { this.meta = null; this.mutations = new Map(); this.feeds = new Map(); this.rows = new Map(); this.writes = 0; return Promise.resolve(); }
  loadSync() {
    const pairs = [];
    for (const [fk, m] of this.rows) for (const [k, t] of m) pairs.push([fk, k, t]);
    return decodeStored(this.meta, [...this.mutations.values()], [...this.feeds.values()], pairs);
  }
  load() { return Promise.resolve(this.loadSync()); }
  applySync(ops) {
    this.writes++;
    for (const raw of ops) {
      const op = encodeOp(raw);
      switch (op[0]) {
        case "meta": this.meta = { ...op[1] }; break;
        case "putMutation": this.mutations.set(op[1].id, op[1]); break;
        case "deleteMutation": this.mutations.delete(op[1]); break;
        case "putFeed": this.feeds.set(op[1].key, op[1]); if (!this.rows.has(op[1].key)) this.rows.set(op[1].key, new Map()); break;
        case "deleteFeed": this.feeds.delete(op[1]); this.rows.delete(op[1]); break;
        case "clearRows": this.rows.set(op[1], new Map()); break;
        case "putRow": { let m = this.rows.get(op[1]); if (!m) { m = new Map(); this.rows.set(op[1], m); } m.set(op[2], op[3]); break; }
        case "deleteRow": { const m = this.rows.get(op[1]); if (m) m.delete(op[2]); break; }
      }
    }
  }
  write(ops) { this.applySync(ops); return Promise.resolve(); }
}

const IDB_STORES = ["meta", "mutations", "feeds", "rows"];

function idbRequest(req) {
  return new Promise((resolve, reject) => { req.onsuccess = () => resolve(req.result); req.onerror = () => reject(req.error); });
}

/**
 * IndexedDB store: one database per namespace; every write is one readwrite transaction over all
 * stores with `durability: "strict"`, so rows, cursors and the mutation queue change together.
 * Writes issued while one is committing are merged into the next transaction.
 */
export class IndexedDbStore {
  constructor(name) { this.name = name; this.db = null; this.pending = []; this.busy = false; }
  async open() {
    if (this.db) return this.db;
    const req = indexedDB.open(this.name, 1);
    req.onupgradeneeded = () => {
      const db = req.result;
      db.createObjectStore("meta");
      db.createObjectStore("mutations", { keyPath: "id" });
      db.createObjectStore("feeds", { keyPath: "key" });
      db.createObjectStore("rows");
    };
    this.db = await idbRequest(req);
    this.db.onversionchange = () => { this.db.close(); this.db = null; };
    return this.db;
  }
  async load() {
    const db = await this.open();
    const tx = db.transaction(IDB_STORES, "readonly");
    const [meta, mutations, feeds, rowKeys, rowValues] = await Promise.all([
      idbRequest(tx.objectStore("meta").get("meta")),
      idbRequest(tx.objectStore("mutations").getAll()),
      idbRequest(tx.objectStore("feeds").getAll()),
      idbRequest(tx.objectStore("rows").getAllKeys()),
      idbRequest(tx.objectStore("rows").getAll()),
    ]);
    const pairs = rowKeys.map((k, i) => [k[0], k[1], rowValues[i]]);
    return decodeStored(meta, mutations, feeds, pairs);
  }
  write(ops) {
    return new Promise((resolve, reject) => {
      this.pending.push({ ops: ops.map(encodeOp), resolve, reject });
      this._drain();
    });
  }
  async _drain() {
    if (this.busy || !this.pending.length) return;
    this.busy = true;
    const batch = this.pending.splice(0);
    try {
      const db = await this.open();
      await new Promise((resolve, reject) => {
        const tx = db.transaction(IDB_STORES, "readwrite", { durability: "strict" });
        const meta = tx.objectStore("meta"), muts = tx.objectStore("mutations"), feeds = tx.objectStore("feeds"), rows = tx.objectStore("rows");
        const range = (fk) => IDBKeyRange.bound([fk, ""], [fk, "\uffff"]);
        for (const { ops } of batch) for (const op of ops) {
          switch (op[0]) {
            case "meta": meta.put(op[1], "meta"); break;
            case "putMutation": muts.put(op[1]); break;
            case "deleteMutation": muts.delete(op[1]); break;
            case "putFeed": feeds.put(op[1]); break;
            case "deleteFeed": feeds.delete(op[1]); rows.delete(range(op[1])); break;
            case "clearRows": rows.delete(range(op[1])); break;
            case "putRow": rows.put(op[3], [op[1], op[2]]); break;
            case "deleteRow": rows.delete([op[1], op[2]]); break;
          }
        }
        tx.oncomplete = () => resolve();
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
      });
      for (const b of batch) b.resolve();
    } catch (e) {
      for (const b of batch) b.reject(e);
    } finally {
      this.busy = false;
      this._drain();
    }
  }
  async wipe() {
    if (this.db) { this.db.close(); this.db = null; }
    await new Promise((resolve) => { const r = indexedDB.deleteDatabase(this.name); r.onsuccess = r.onerror = r.onblocked = () => resolve(); });
  }
}

// ---------------------------------------------------------------------------------------------
// Engine: runs a SyncCore against a real WebSocket, a store, timers and getToken.

class Engine {
  constructor({ url, getToken, store, core, onAction, WebSocketImpl }) {
    this.url = url; this.getToken = getToken; this.store = store; this.core = core; this.onAction = onAction;
    this.WS = WebSocketImpl || globalThis.WebSocket;
    this.timers = new Map();
    this.ws = null; this.wsGen = 0;
    this.stopped = false;
    this._online = () => this.run(this.core.wake());
    if (typeof addEventListener === "function") addEventListener("online", this._online);
  }
  run(actions) {
    for (const a of actions) {
      try { this._do(a); } catch (e) { this.onAction({ type: "error", error: new SynclineError("internal", String(e && e.message)) }); }
    }
  }
  _do(a) {
    switch (a.type) {
      case "send":
        if (this.ws && this.ws.readyState === 1) this.ws.send(stringifyJSON(a.msg));
        break;
      case "open": this._open(a.gen); break;
      case "closeSocket": this._closeSocket(a.code, a.reason); break;
      case "setTimer": {
        clearTimeout(this.timers.get(a.name));
        this.timers.set(a.name, setTimeout(() => { this.timers.delete(a.name); if (!this.stopped) this.run(this.core.timerFired(a.name)); }, a.ms));
        break;
      }
      case "clearTimer": clearTimeout(this.timers.get(a.name)); this.timers.delete(a.name); break;
      case "fetchToken":
        Promise.resolve().then(() => this.getToken()).then(
          (t) => { if (!this.stopped) this.run(this.core.tokenFetched(t)); },
          (e) => { if (!this.stopped) this.run(this.core.tokenFailed(e)); });
        break;
      case "persist":
        this.store.write(a.ops).then(
          () => { if (!this.stopped) this.run(this.core.persisted(a.ticket)); },
          (e) => {
            this.onAction({ type: "error", error: new SynclineError("storage_failed", `could not store: ${e && e.message}`) });
            if (!this.stopped) this.run(this.core.persisted(a.ticket));
          });
        break;
      default: this.onAction(a);
    }
  }
  _open(gen) {
    this._closeSocket(1000, "replaced");
    let ws;
    try { ws = new this.WS(this.url, "syncline.v1"); }
    catch (e) { queueMicrotask(() => this.run(this.core.socketClosed(gen, 1006, String(e && e.message)))); return; }
    this.ws = ws;
    ws.onopen = () => this.run(this.core.socketOpened(gen));
    ws.onmessage = (e) => {
      let msg;
      try { msg = parseJSON(typeof e.data === "string" ? e.data : String(e.data)); } catch { return; }
      this.run(this.core.socketMessage(gen, msg));
    };
    ws.onclose = (e) => { if (this.ws === ws) this.ws = null; this.run(this.core.socketClosed(gen, e.code, e.reason)); };
    ws.onerror = () => {};
  }
  _closeSocket(code, reason) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(code, reason); } catch { try { ws.close(); } catch { /* already closed */ } }
  }
  stop() {
    this.run(this.core.stop());
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this._closeSocket(1000, "client closed");
    if (typeof removeEventListener === "function") removeEventListener("online", this._online);
  }
}

// ---------------------------------------------------------------------------------------------
// App-facing handles

class Emitter {
  constructor() { this._l = new Map(); }
  /** @returns {() => void} unsubscribe */
  on(event, fn) {
    let s = this._l.get(event);
    if (!s) { s = new Set(); this._l.set(event, s); }
    s.add(fn);
    return () => s.delete(fn);
  }
  _fire(event, value) {
    const s = this._l.get(event);
    if (!s) return;
    for (const fn of [...s]) { try { fn(value); } catch (e) { setTimeout(() => { throw e; }); } }
  }
}

/** One tab's copy of a feed's published rows, shared by its handles. */
class Mirror {
  constructor(key) {
    this.key = key; this.rows = new Map(); this.pending = new Set(); this.ready = false; this.synced = false;
    this.handles = new Set(); this.error = null;
  }
  full(state) {
    this.rows.clear();
    for (const [k, r] of state.rows) this.rows.set(k, r);
    this.pending = new Set(state.pending);
    this.synced = true;
    this.error = state.error || null;
    const wasReady = this.ready;
    this.ready = this.ready || state.ready;
    if (this.rows.size || this.ready) {
      const changes = state.rows.map(([k, r]) => ({ op: "insert", key: parseJSON(k), row: r }));
      for (const h of this.handles) h._changed({ rows: this.rows, changes, reset: true }, this.ready && !wasReady);
    }
    if (this.error) for (const h of this.handles) h._error(this.error);
  }
  publish(p) {
    if (!this.synced) return;
    for (const c of p.changes) {
      const k = keyString(c.key);
      if (c.op === "delete") this.rows.delete(k); else this.rows.set(k, c.row);
    }
    this.pending = new Set(p.pending);
    const becameReady = p.ready && !this.ready;
    if (p.ready) this.ready = true;
    for (const h of this.handles) h._changed({ rows: this.rows, changes: p.changes, reset: p.reset }, becameReady);
  }
}

/** A live query: rows of a collection matching `where`, confirmed plus optimistic overlay. */
class LiveQuery extends Emitter {
  constructor(client, holder, collection, where, mirror) {
    super();
    this.client = client; this.holder = holder; this.collection = collection; this.where = where; this._m = mirror;
    this.error = null;
    this.closed = false;
    this.ready = new Promise((resolve) => { this._resolveReady = resolve; });
    if (mirror.ready) this._resolveReady(this);
  }
  /** @returns {Map<string, any>} */
  get rows() { return this._m.rows; }
  get(key) { return this._m.rows.get(keyString(key)); }
  isPending(key) { return this._m.pending.has(keyString(key)); }
  _changed(ev, becameReady) {
    if (this.closed) return;
    if (this._m.ready) this._resolveReady(this);
    this._fire("change", ev);
  }
  _error(e) { this.error = e; this._fire("error", e); }
  unsubscribe() {
    if (this.closed) return;
    this.closed = true;
    this.client._unsubscribe(this);
  }
}

/** A topic subscription: `message` events. */
class TopicSub extends Emitter {
  constructor(client, holder, topic, mirror) {
    super();
    this.client = client; this.holder = holder; this.topic = topic; this._m = mirror; this.error = null; this.closed = false;
  }
  _changed() {}
  _message(m) { if (!this.closed) this._fire("message", m); }
  _error(e) { this.error = e; this._fire("error", e); }
  unsubscribe() { if (this.closed) return; this.closed = true; this.client._unsubscribe(this); }
}

// ---------------------------------------------------------------------------------------------
// Client: the public object; leader (runs the engine) or follower (goes through the leader's tab).

function resolveUrl(url) {
  if (/^wss?:\/\//.test(url)) return url;
  const base = typeof location !== "undefined" ? location.href : "http://localhost/";
  const u = new URL(url, base);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.toString();
}

function errorFrom(o) { return o instanceof SynclineError ? o : new SynclineError(o && o.code || "internal", o && o.message, o && o.details); }
function errorOut(e) { return e ? { code: e.code, message: e.message, details: e.details } : null; }

class Client extends Emitter {
  constructor(opts) {
    super();
    if (!opts || !opts.url || typeof opts.getToken !== "function") throw new SynclineError("bad_request", "connect({url, getToken}) needs both");
    this.options = opts;
    this.url = resolveUrl(opts.url);
    /** @type {Record<string, (rows:any, args:any) => void>} */
    this.mutators = {};
    this.status = { state: "connecting", pending: 0, leader: false };
    this._page = randomHex(12, Math.random);
    this._seq = 0;
    this._mirrors = new Map();
    this._handles = new Map(); // holder -> handle
    this._reqs = new Map(); // req -> {resolve, reject, name, args, accepted}
    this._role = null;
    this._engine = null;
    this._channel = null;
    this._closed = false;
    const idb = typeof indexedDB !== "undefined";
    this._storage = opts.storage || (idb ? "indexeddb" : "memory");
    this._started = this._init().catch((e) => this._fire("error", errorFrom(e)));
  }

  async _init() {
    let token = null;
    for (let attempt = 0; !this._closed; attempt++) {
      try { token = await this.options.getToken(); break; }
      catch (e) {
        const hint = this.options.user ?? lastUser(this.url);
        if (hint != null) break;
        this._setStatus({ state: "offline", pending: 0, leader: false });
        await new Promise((r) => setTimeout(r, backoffDelay(attempt, this.options.backoff, Math.random) + 100));
      }
    }
    if (this._closed) return;
    const claims = token ? decodeToken(token) : null;
    const user = (claims && claims.sub) ?? this.options.user ?? lastUser(this.url) ?? "";
    if (this.options.user != null && claims && claims.sub != null && claims.sub !== this.options.user) {
      this._fire("error", new SynclineError("bad_request", `token sub '${claims.sub}' is not connect({user: '${this.options.user}'})`));
    }
    rememberUser(this.url, user);
    this._ns = "syncline:" + (this.options.name || `${this.url}|${user}`);
    const locks = this.options.locks || (typeof navigator !== "undefined" && navigator.locks);
    const BC = this.options.BroadcastChannel || (typeof BroadcastChannel !== "undefined" ? BroadcastChannel : null);
    const shared = this._storage === "indexeddb" || typeof this._storage === "object";
    if (!shared || !locks || !BC) { await this._lead(token); return; }
    this._channel = new BC(this._ns);
    this._channel.onmessage = (e) => this._onChannel(e.data);
    this._role = "follower";
    this._post({ t: "hello", from: this._page });
    this._bye = () => { if (this._role === "follower") this._post({ t: "bye", from: this._page }); };
    if (typeof addEventListener === "function") addEventListener("pagehide", this._bye);
    locks.request(this._ns, { mode: "exclusive" }, () => {
      if (this._closed) return undefined;
      return new Promise((release) => { this._releaseLock = release; this._lead(token).catch((e) => this._fire("error", errorFrom(e))); });
    });
  }

  async _lead(token) {
    let store = typeof this._storage === "object" ? this._storage : this._storage === "indexeddb" ? new IndexedDbStore(this._ns) : new MemoryStore();
    let stored;
    try { stored = await store.load(); }
    catch (e) {
      // No usable IndexedDB (private mode, quota, blocked): keep working, without durability.
      this._fire("error", new SynclineError("storage_failed", `could not open the store, using memory: ${e && e.message}`));
      store = new MemoryStore();
      stored = await store.load();
    }
    this._store = store;
    if (this._closed) return;
    const core = new SyncCore({ stored, mutatorsFn: () => this.mutators, keys: this.options.keys, backoff: this.options.backoff, heartbeatMs: this.options.heartbeatMs, maxMessageBytes: this.options.maxMessageBytes });
    this._engine = new Engine({ url: this.url, getToken: this.options.getToken, store, core, onAction: (a) => this._onAction(a), WebSocketImpl: this.options.WebSocket });
    this._role = "leader";
    this.status = { ...this.status, leader: true };
    // Our own handles and requests move to the local engine.
    for (const h of this._handles.values()) this._leaderSubscribe(this._page, h.holder, h._spec);
    this._engine.run(core.start(token && decodeToken(token) ? token : undefined));
    for (const [req, r] of this._reqs) if (!r.accepted) this._engine.run(core.mutate(r.name, r.args, { page: this._page, req }).actions);
    this._setStatus({ ...core.statusNow(), leader: true });
    this._post({ t: "leader", from: this._page });
  }

  _post(m) { if (this._channel) { try { this._channel.postMessage(m); } catch { /* closed */ } } }

  _leaderSubscribe(page, holder, spec) {
    const core = this._engine.core;
    this._engine.run(core.subscribe(holder, spec));
    const key = feedKeyOf(spec);
    const st = core.feedState(key) || { rows: [], pending: [], ready: false, error: null };
    if (page === this._page) { const m = this._mirrors.get(key); if (m) m.full(st); }
    else this._post({ t: "full", to: page, feed: key, state: stringifyJSON({ ...st, error: errorOut(st.error) }) });
  }

  /** Actions the engine hands up (leader tab): apply here, broadcast to the other tabs. */
  _onAction(a) {
    switch (a.type) {
      case "publish": {
        const m = this._mirrors.get(a.feed);
        if (m) m.publish(a);
        if (this._channel) this._post({ t: "publish", feed: a.feed, changes: stringifyJSON(a.changes), reset: a.reset, pending: a.pending, ready: a.ready });
        break;
      }
      case "message": this._onMessage(a); this._post({ t: "message", feed: a.feed, m: stringifyJSON({ topic: a.topic, payload: a.payload, cursor: a.cursor }) }); break;
      case "status": this._setStatus({ ...a.status, leader: true }); this._post({ t: "status", status: a.status }); break;
      case "outcome": {
        const o = { mid: a.mid, name: a.name, args: a.args, origin: a.origin, ok: a.ok, result: a.result, error: a.error };
        this._onOutcome(o);
        this._post({ t: "outcome", o: stringifyJSON({ ...o, error: errorOut(a.error) }) });
        break;
      }
      case "accepted":
        if (a.origin && a.origin.page === this._page) { const r = this._reqs.get(a.origin.req); if (r) { r.accepted = true; r.queued(a.mid); } }
        else if (a.origin) this._post({ t: "accepted", origin: a.origin, mid: a.mid });
        break;
      case "feedError": this._onFeedError(a.feed, a.error); this._post({ t: "feedError", feed: a.feed, error: errorOut(a.error) }); break;
      case "error": this._fire("error", a.error); this._post({ t: "error", error: errorOut(a.error) }); break;
    }
  }

  _onChannel(d) {
    if (!d || typeof d !== "object" || this._closed) return;
    if (this._role === "leader") {
      const core = this._engine && this._engine.core;
      if (!core) return;
      switch (d.t) {
        case "hello": this._post({ t: "leader", from: this._page }); this._post({ t: "status", status: core.statusNow() }); break;
        case "sub": this._leaderSubscribe(d.from, d.holder, d.spec); break;
        case "unsub": this._engine.run(core.unsubscribe(d.holder)); break;
        case "bye": this._engine.run(core.unsubscribePrefix(d.from + ":")); break;
        case "mutate": this._engine.run(core.mutate(d.name, parseJSON(d.args), { page: d.from, req: d.req }).actions); break;
        case "logout": this.logout().then(() => {}); break;
      }
      return;
    }
    switch (d.t) {
      case "leader": this._resendToLeader(); break;
      case "full": if (d.to === this._page) { const m = this._mirrors.get(d.feed); if (m) { const st = parseJSON(d.state); m.full({ ...st, error: st.error ? errorFrom(st.error) : null }); } } break;
      case "publish": { const m = this._mirrors.get(d.feed); if (m) m.publish({ ...d, changes: parseJSON(d.changes) }); break; }
      case "message": this._onMessage({ feed: d.feed, ...parseJSON(d.m) }); break;
      case "status": this._setStatus({ ...d.status, leader: false }); break;
      case "outcome": { const o = parseJSON(d.o); this._onOutcome({ ...o, error: o.error ? errorFrom(o.error) : undefined }); break; }
      case "accepted": if (d.origin && d.origin.page === this._page) { const r = this._reqs.get(d.origin.req); if (r) { r.accepted = true; r.queued(d.mid); } } break;
      case "feedError": this._onFeedError(d.feed, errorFrom(d.error)); break;
      case "error": this._fire("error", errorFrom(d.error)); break;
      case "loggedOut": this._closeLocal(); if (this._loggedOut) this._loggedOut(); break;
    }
  }

  _resendToLeader() {
    for (const h of this._handles.values()) this._post({ t: "sub", from: this._page, holder: h.holder, spec: h._spec });
    for (const [req, r] of this._reqs) if (!r.accepted) this._post({ t: "mutate", from: this._page, req, name: r.name, args: stringifyJSON(r.args) });
  }

  _onMessage(a) {
    const m = this._mirrors.get(a.feed);
    if (m) for (const h of m.handles) if (h._message) h._message({ topic: a.topic, payload: a.payload, cursor: a.cursor });
  }

  _onFeedError(feed, error) {
    const m = this._mirrors.get(feed);
    if (!m) return;
    m.error = error;
    for (const h of m.handles) h._error(error);
  }

  _onOutcome(o) {
    const r = o.origin && o.origin.page === this._page ? this._reqs.get(o.origin.req) : undefined;
    if (r) {
      this._reqs.delete(o.origin.req);
      if (o.ok) r.resolve(o.result); else r.reject(errorFrom(o.error));
      return;
    }
    const e = { mid: o.mid, name: o.name, args: o.args, ok: o.ok };
    if (o.ok) e.result = o.result; else e.error = errorFrom(o.error);
    this._fire("settled", e);
  }

  _setStatus(s) {
    const next = { state: s.state, pending: s.pending, leader: !!s.leader };
    const prev = this.status;
    this.status = next;
    if (prev.state !== next.state || prev.pending !== next.pending || prev.leader !== next.leader) this._fire("status", next);
  }

  _register(handle, spec) {
    const key = feedKeyOf(spec);
    let m = this._mirrors.get(key);
    if (!m) { m = new Mirror(key); this._mirrors.set(key, m); }
    m.handles.add(handle);
    handle._m = m;
    handle._spec = spec;
    this._handles.set(handle.holder, handle);
    if (this._role === "leader" && this._engine) this._leaderSubscribe(this._page, handle.holder, spec);
    else if (this._role === "follower") this._post({ t: "sub", from: this._page, holder: handle.holder, spec });
    return handle;
  }

  /**
   * A live query on `collection` rows matching `where`.
   * @param {string} collection @param {Record<string, any>} [where] @param {{key?: string[]}} [opts]
   */
  subscribe(collection, where = {}, opts = {}) {
    const holder = `${this._page}:q${++this._seq}`;
    const spec = { collection, where: where || {} };
    if (opts.key) spec.key = opts.key;
    if (opts.conflate) spec.conflate = true;
    const key = feedKeyOf(spec);
    const m = this._mirrors.get(key) || new Mirror(key);
    this._mirrors.set(key, m);
    return this._register(new LiveQuery(this, holder, collection, where || {}, m), spec);
  }

  /** A topic feed (`message` events). @param {string} topic */
  subscribeTopic(topic) {
    const holder = `${this._page}:t${++this._seq}`;
    const spec = { topic };
    const key = feedKeyOf(spec);
    const m = this._mirrors.get(key) || new Mirror(key);
    this._mirrors.set(key, m);
    return this._register(new TopicSub(this, holder, topic, m), spec);
  }

  _unsubscribe(handle) {
    this._handles.delete(handle.holder);
    const m = handle._m;
    if (m) { m.handles.delete(handle); if (!m.handles.size) this._mirrors.delete(m.key); }
    if (this._role === "leader" && this._engine) this._engine.run(this._engine.core.unsubscribe(handle.holder));
    else if (this._role === "follower") this._post({ t: "unsub", from: this._page, holder: handle.holder });
  }

  /**
   * Run mutator `name` on the server; its optimistic effect (`client.mutators[name]`) shows at once.
   * Resolves with the ack's result; rejects with a SynclineError (code of the reject, or `outcome_expired`).
   * The returned promise's `mid` property is a promise of the mutation id, resolved once it is durably queued.
   */
  mutate(name, args = {}) {
    if (this._closed) return Promise.reject(new SynclineError("closed", "client closed"));
    const req = ++this._seq;
    let queued;
    const mid = new Promise((resolve) => { queued = resolve; });
    const p = new Promise((resolve, reject) => this._reqs.set(req, { resolve, reject, name, args, accepted: false, queued }));
    // The mid is known once the mutation is durably queued (in a follower tab, after the leader answers).
    p.mid = mid;
    if (this._role === "leader" && this._engine) this._engine.run(this._engine.core.mutate(name, args, { page: this._page, req }).actions);
    else if (this._role === "follower") this._post({ t: "mutate", from: this._page, req, name, args: stringifyJSON(args) });
    return p;
  }

  _closeLocal() {
    if (this._closed) return;
    this._closed = true;
    if (this._engine && !this._engine.stopped) this._engine.stop();
    if (this._releaseLock) this._releaseLock();
    if (this._channel) { this._channel.close(); this._channel = null; }
    if (this._bye && typeof removeEventListener === "function") removeEventListener("pagehide", this._bye);
    this._setStatus({ state: "offline", pending: this.status.pending, leader: false });
  }

  /** Close the socket (and hand leadership to another tab). */
  close() {
    if (this._role === "follower") this._post({ t: "bye", from: this._page });
    this._closeLocal();
  }

  /** Wipe the store (queue, rows, client id) and close. */
  async logout() {
    await this._started;
    forgetUser(this.url);
    if (this._role === "leader") {
      // Wipe while holding the lock, so no other tab opens the store meanwhile.
      if (this._engine) this._engine.stop();
      if (this._store) await this._store.wipe();
      this._post({ t: "loggedOut" });
      this._closeLocal();
      return;
    }
    if (this._role === "follower" && this._channel) {
      const done = new Promise((resolve) => { this._loggedOut = resolve; setTimeout(resolve, 3000); });
      this._post({ t: "logout", from: this._page });
      await done;
    }
    this._closeLocal();
    if (this._storage === "indexeddb" && typeof indexedDB !== "undefined" && this._ns) await new IndexedDbStore(this._ns).wipe();
  }

}

function lastUser(url) {
  try { return typeof localStorage !== "undefined" ? localStorage.getItem("syncline:user:" + url) : null; } catch { return null; }
}
function rememberUser(url, user) {
  try { if (typeof localStorage !== "undefined" && user) localStorage.setItem("syncline:user:" + url, user); } catch { /* private mode */ }
}
function forgetUser(url) {
  try { if (typeof localStorage !== "undefined") localStorage.removeItem("syncline:user:" + url); } catch { /* private mode */ }
}

/**
 * Connect to a Syncline server.
 * @param {{url: string, getToken: () => Promise<string>|string, storage?: "indexeddb"|"memory",
 *   backoff?: {baseMs?: number, capMs?: number}, heartbeatMs?: number, name?: string, user?: string,
 *   keys?: Record<string, string[]>, maxMessageBytes?: number, WebSocket?: any}} options
 */
export function connect(options) { return new Client(options); }
