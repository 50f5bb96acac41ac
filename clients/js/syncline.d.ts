// Type declarations for syncline.js (the Syncline browser client). See clients/js/README.md.

/** An error with a protocol code: a reject's code (`insufficient_funds`), `outcome_expired`, `client_id_in_use`, … */
export class SynclineError extends Error {
  constructor(code: string, message?: string, details?: unknown);
  readonly code: string;
  readonly details: unknown;
  toJSON(): { code: string; message: string; details: unknown };
}

/** An exact decimal that keeps the digits it was written with (`1250.00`). */
export class Decimal {
  constructor(text: string);
  static from(x: number | string | bigint | Decimal): Decimal;
  /** Exact sum, at the larger scale of the two. */
  plus(x: number | string | Decimal): Decimal;
  /** Exact difference, at the larger scale of the two. */
  minus(x: number | string | Decimal): Decimal;
  /** Exact product (scale = sum of the scales). */
  times(x: number | string | Decimal): Decimal;
  negated(): Decimal;
  /** -1, 0 or 1. */
  cmp(x: number | string | Decimal): -1 | 0 | 1;
  /** Same value, ignoring scale (`1.50` equals `1.5`). */
  equals(x: number | string | Decimal): boolean;
  isNegative(): boolean;
  isZero(): boolean;
  /** Digits after the decimal point. */
  readonly scale: number;
  /** The exact digits. */
  toString(): string;
  /** The digits as a raw JSON number (JSON.rawJSON) where available, else the digit string. */
  toJSON(): unknown;
  /** The nearest JS number (lossy). */
  valueOf(): number;
  toNumber(): number;
}

/** A JSON value as syncline.js parses it: numbers that do not round-trip through Number are Decimal. */
export type Value = null | boolean | number | string | Decimal | Value[] | { [k: string]: Value };
export type Row = { [column: string]: any };
export type Key = { [column: string]: any };

export type State = "connecting" | "live" | "offline" | "resyncing";
export interface Status { state: State; pending: number; leader: boolean }

export interface Change { op: "insert" | "update" | "delete"; key: Key | null; row: Row | null }
export interface ChangeEvent { rows: Map<string, Row>; changes: Change[]; reset: boolean }

export type Settled =
  | { mid: number; name: string; args: any; ok: true; result: any }
  | { mid: number; name: string; args: any; ok: false; error: SynclineError };

/** The rows view a mutator's optimistic effect works on (confirmed rows plus earlier effects). */
export interface RowsView {
  get(collection: string, key: Key | string): Row | undefined;
  /** Inserts a row; a missing single key column gets a client-made key (`pending:<mid>:<n>`). Returns the row. */
  insert(collection: string, row: Row): Row;
  update(collection: string, key: Key | string, patchOrFn: Partial<Row> | ((row: Row) => Row)): Row | undefined;
  delete(collection: string, key: Key | string): boolean;
  all(collection: string): Row[];
}
export type Mutator = (rows: RowsView, args: any) => void;

export interface LiveQuery {
  readonly collection: string;
  readonly where: Record<string, any>;
  /** Confirmed rows plus the optimistic overlay, keyed by keyString(key). */
  readonly rows: Map<string, Row>;
  get(key: Key | string): Row | undefined;
  /** True while the row shown is (partly) an optimistic, unconfirmed effect. */
  isPending(key: Key | string): boolean;
  /** Resolves when rows are first available (from the store or the snapshot). */
  readonly ready: Promise<LiveQuery>;
  /** Set when the feed ended (forbidden, not_found, bad_request, revoked). */
  readonly error: SynclineError | null;
  on(event: "change", fn: (ev: ChangeEvent) => void): () => void;
  on(event: "error", fn: (e: SynclineError) => void): () => void;
  unsubscribe(): void;
}

export interface TopicMessage { topic: string; payload: any; cursor: string }
export interface TopicSubscription {
  readonly topic: string;
  readonly error: SynclineError | null;
  on(event: "message", fn: (m: TopicMessage) => void): () => void;
  on(event: "error", fn: (e: SynclineError) => void): () => void;
  unsubscribe(): void;
}

export interface ConnectOptions {
  /** `ws://host/v1/sync`, or a path like `/v1/sync` resolved against location. */
  url: string;
  /** Called at start, before the token's exp (sent in-band as `auth`), and after close 4001. */
  getToken: () => Promise<string> | string;
  /** Default "indexeddb" when available. "memory": nothing survives a reload, no tab sharing. */
  storage?: "indexeddb" | "memory";
  /** Reconnect backoff with full jitter; default {baseMs: 250, capMs: 10000}. */
  backoff?: { baseMs?: number; capMs?: number };
  /** Overrides the welcome's heartbeat_ms for the idle ping. */
  heartbeatMs?: number;
  /** Namespace of the store, lock and channel (default: URL + the token's sub). */
  name?: string;
  /** The user (token sub) when known up front: lets a reload open the store while getToken fails (offline). */
  user?: string;
  /** Key columns per collection when not `id` (learned from changes otherwise). */
  keys?: Record<string, string[]>;
  /** A mutation whose message is larger fails at once with `message_too_big` (default 1 MiB, the server's default). */
  maxMessageBytes?: number;
  /** A WebSocket constructor (e.g. outside browsers). */
  WebSocket?: any;
}

export interface Client {
  readonly status: Status;
  /** Optimistic effects by mutator name, re-run over confirmed rows after a reload. */
  mutators: Record<string, Mutator>;
  on(event: "status", fn: (s: Status) => void): () => void;
  on(event: "settled", fn: (e: Settled) => void): () => void;
  on(event: "error", fn: (e: SynclineError) => void): () => void;
  /** Resolves with the ack's result; `mid` resolves with the mutation id once it is durably queued. */
  mutate(name: string, args?: any): Promise<any> & { mid: Promise<number> };
  /**
   * `opts.conflate`: while the connection is behind, the server may merge this feed's pending
   * changes by row key (protocol §3.8): fewer intermediate states, the same rows and cursor.
   * A conflating query is a feed of its own (not shared with an exact one of the same `where`).
   */
  subscribe(collection: string, where?: Record<string, any>, opts?: { key?: string[]; conflate?: boolean }): LiveQuery;
  subscribeTopic(topic: string): TopicSubscription;
  /** Wipes the store (IndexedDB) and closes the socket. */
  logout(): Promise<void>;
  close(): void;
}

export function connect(options: ConnectOptions): Client;
/** JSON of a key object with sorted field names (a string is returned as it is). */
export function keyString(key: Key | string): string;
/** JSON.parse keeping number digits (Decimal where Number would change them). */
export function parseJSON(text: string): any;
/** JSON.stringify sending Decimal digits verbatim. */
export function stringifyJSON(value: any): string;
export function matchesWhere(where: Record<string, any> | undefined, row: Row): boolean;
export function decodeToken(token: string): Record<string, any> | null;
export function backoffDelay(attempt: number, opts?: { baseMs?: number; capMs?: number }, random?: () => number): number;
export function tokenRefreshDelay(expMs: number, nowMs: number): number;
export function feedKeyOf(spec: { collection?: string; where?: Record<string, any>; topic?: string; conflate?: boolean }): string;

/** The I/O-free state machine behind a client (exported for tests and other shells). */
export class SyncCore {
  constructor(o?: any);
  [k: string]: any;
}
export class MemoryStore { [k: string]: any }
export class IndexedDbStore { constructor(name: string); [k: string]: any }
