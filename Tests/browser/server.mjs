// Runs the real `syncline serve` binary (the debug build) against the test's own cluster, on a
// fixed port so the page's origin — and with it IndexedDB and the service worker — survives a
// stop and a start. Its log goes to a file in the output folder.
import { spawn } from "node:child_process";
import { openSync, closeSync, existsSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

export const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export class SynclineServer {
  /**
   * @param {{databaseURL: string, port: number, staticDir: string, logPath: string, binary?: string, extraArgs?: string[]}} options
   */
  constructor(options) {
    this.options = options;
    this.binary = options.binary ?? process.env.SYNCLINE_BINARY ?? join(repositoryRoot, ".build/debug/syncline");
    this.child = null;
    this.starts = 0;
  }

  get origin() { return `http://127.0.0.1:${this.options.port}`; }

  /** Starts `serve` and resolves once /readyz answers 200 (with the moment it did, epoch ms). */
  async start(timeoutMs = 60000) {
    if (this.child) throw new Error("syncline serve is already running");
    if (!existsSync(this.binary)) throw new Error(`${this.binary} not found: run swift build first`);
    const { databaseURL, port, staticDir, logPath, extraArgs = [] } = this.options;
    const args = ["serve", "--database-url", databaseURL, "--demo", "--no-demo-generator", "--insecure-dev-auth",
                  "--port", String(port), "--static-dir", staticDir, ...extraArgs];
    const log = openSync(logPath, "a");
    const child = spawn(this.binary, args, { cwd: repositoryRoot, stdio: ["ignore", log, log] });
    closeSync(log);
    this.child = child;
    this.starts += 1;
    let exited = null;
    child.once("exit", (code, signal) => { exited = code ?? signal; });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (exited !== null) {
        this.child = null;
        throw new Error(`syncline serve exited (${exited}) before it was ready; see ${logPath}`);
      }
      try {
        const response = await fetch(`${this.origin}/readyz`);
        if (response.status === 200) return Date.now();
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) {
        await this.stop();
        throw new Error(`syncline serve not ready within ${timeoutMs} ms; see ${logPath}`);
      }
      await sleep(50);
    }
  }

  /** SIGTERM (graceful: WebSockets close with 1001), then waits for the process to exit. */
  async stop(timeoutMs = 20000) {
    const child = this.child;
    if (!child) return;
    this.child = null;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    await exited;
    clearTimeout(timer);
  }

  get running() { return this.child !== null; }
}
