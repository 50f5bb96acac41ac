// A throwaway PostgreSQL cluster for the browser test, like Sources/SynclinePostgres/
// DevelopmentCluster.swift: initdb into a temporary folder, pg_ctl start on a free loopback port,
// and, as root, every cluster command run as the `postgres` user (PostgreSQL refuses root).
// The test owns the cluster so that `syncline serve` can stop and start again on the same data.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, readdirSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:net";

/** initdb, pg_ctl and psql: `$SYNCLINE_PG_BINDIR`, `pg_config --bindir`, or the newest /usr/lib/postgresql/N/bin. */
export function postgresBinDirectory() {
  const fromEnv = process.env.SYNCLINE_PG_BINDIR;
  if (fromEnv) return fromEnv;
  try {
    const dir = execFileSync("pg_config", ["--bindir"], { encoding: "utf8" }).trim();
    if (existsSync(join(dir, "initdb"))) return dir;
  } catch { /* no pg_config */ }
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? readdirSync(root).map(Number).filter(Number.isFinite).sort((a, b) => a - b) : [];
  for (const v of versions.reverse()) {
    if (existsSync(`${root}/${v}/bin/initdb`)) return `${root}/${v}/bin`;
  }
  throw new Error("PostgreSQL server binaries not found (install postgresql or set SYNCLINE_PG_BINDIR)");
}

/** A free TCP port on 127.0.0.1 (bound and released; good enough for a test on one machine). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export class PostgresCluster {
  /** Starts a new cluster with a `syncline` superuser (trust auth) and database `syncline`. */
  static async start({ database = "syncline" } = {}) {
    const cluster = new PostgresCluster();
    cluster.bin = postgresBinDirectory();
    cluster.asRoot = process.getuid?.() === 0;
    cluster.directory = mkdtempSync(join(tmpdir(), "syncline-browser-pg-"));
    chmodSync(cluster.directory, 0o755);
    cluster.data = join(cluster.directory, "data");
    cluster.port = await freePort();
    cluster.database = database;
    if (cluster.asRoot) execFileSync("chown", ["-R", "postgres:postgres", cluster.directory]);
    cluster.#runAsOwner("initdb", ["-D", cluster.data, "-U", "syncline", "--auth=trust", "-E", "UTF8",
                                   "--no-locale", "--no-sync"]);
    const options = [`-c listen_addresses=127.0.0.1`, `-p ${cluster.port}`, `-k ${cluster.directory}`,
                     "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
                     "-c max_connections=100"].join(" ");
    cluster.#runAsOwner("pg_ctl", ["-D", cluster.data, "-l", join(cluster.directory, "postgres.log"),
                                   "-w", "-t", "60", "-o", options, "start"]);
    cluster.started = true;
    cluster.psql(`CREATE DATABASE ${database}`, { database: "postgres" });
    return cluster;
  }

  get url() { return `postgres://syncline@127.0.0.1:${this.port}/${this.database}`; }

  #runAsOwner(tool, args) {
    const path = join(this.bin, tool);
    const [cmd, argv] = this.asRoot ? ["runuser", ["-u", "postgres", "--", path, ...args]] : [path, args];
    const r = spawnSync(cmd, argv, { encoding: "utf8", cwd: "/" });
    if (r.status !== 0) throw new Error(`${tool} failed (${r.status}): ${r.stderr || r.stdout}`);
    return r.stdout;
  }

  /**
   * Runs SQL with psql (-X, stop on error, unaligned tuples only) and returns its output lines.
   * Each call is its own session: when it returns, its transaction has committed.
   */
  psql(sql, { database = this.database } = {}) {
    const r = spawnSync(join(this.bin, "psql"),
      ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-h", "127.0.0.1", "-p", String(this.port), "-U", "syncline",
       "-d", database, "-f", "-"],
      { input: sql, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`psql failed (${r.status}): ${r.stderr}\nSQL: ${sql.slice(0, 500)}`);
    return r.stdout.split("\n").filter((l) => l !== "");
  }

  /** Runs a query returning one `json` column per row and parses each line. */
  queryJSON(sql) {
    return this.psql(sql).map((line) => JSON.parse(line));
  }

  /** Stops the cluster and removes its folder. */
  stop() {
    if (this.started) {
      try { this.#runAsOwner("pg_ctl", ["-D", this.data, "-m", "immediate", "-w", "stop"]); } catch { /* gone */ }
      this.started = false;
    }
    if (this.directory) rmSync(this.directory, { recursive: true, force: true });
  }
}
