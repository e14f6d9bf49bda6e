/**
 * The primary's worker processes (issue 14): the same program started again with
 * CLUSTER_WORKER_ID, each on its own private port and registered as its own member. A worker
 * that exits is started again with backoff (only its sessions reconnect); a drain asks every
 * worker to drain (paced, like any member) and waits for them to exit.
 */
import { fork, type ChildProcess } from 'node:child_process';
import type { Logger } from '../log';
import type { WorkerInfo } from '../outcomes';
import { WORKER_ID_ENV, workerEndpoint, workerInstanceId } from './role';

/** IPC messages between the primary and its workers. */
export const MSG_CONNECTION = 'ddp-cluster:connection';
export const MSG_DRAIN = 'ddp-cluster:drain';

export interface PoolOptions {
  readonly count: number;
  /** The primary's instance id; workers get `<id>-w<i>`. */
  readonly instanceId: string;
  /** The primary's CLUSTER_ENDPOINT_URL (workers get its host with their port). */
  readonly endpointUrl: string | null;
  /** Worker i's private port (i from 1). */
  readonly port: (index: number) => number;
  readonly logger: Logger;
  /** The program to start; defaults to this process's (process.argv[1] with its arguments). */
  readonly script?: string;
  readonly args?: readonly string[];
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** First restart delay; doubles per crash in a row up to maxBackoffMs. */
  readonly backoffMs?: number;
  readonly maxBackoffMs?: number;
  /** How long `stop()` waits for a worker to exit after SIGTERM before SIGKILL. */
  readonly stopTimeoutMs?: number;
}

export type { WorkerInfo } from '../outcomes';

interface Slot {
  readonly index: number;
  readonly instanceId: string;
  readonly port: number;
  child: ChildProcess | null;
  startedAt: number;
  restarts: number;
  /** Crashes in a row (a worker that ran a while resets it). */
  crashes: number;
  timer: NodeJS.Timeout | null;
}

/** A worker that ran this long before exiting counts as healthy: its next restart is immediate-ish. */
const STABLE_MS = 30_000;

export class WorkerPool {
  readonly #o: PoolOptions;
  readonly #slots: Slot[] = [];
  readonly #byId = new Map<string, Slot>();
  #stopping = false;
  #exits: Promise<void> | null = null;

  constructor(o: PoolOptions) {
    this.#o = o;
    for (let index = 1; index <= o.count; index++) {
      const slot: Slot = {
        index, instanceId: workerInstanceId(o.instanceId, index), port: o.port(index),
        child: null, startedAt: 0, restarts: 0, crashes: 0, timer: null,
      };
      this.#slots.push(slot);
      this.#byId.set(slot.instanceId, slot);
    }
  }

  start(): void {
    for (const slot of this.#slots) this.spawn(slot);
  }

  /** The worker process of member `instanceId`, if it is one of ours and connected. */
  process(instanceId: string): ChildProcess | null {
    const child = this.#byId.get(instanceId)?.child ?? null;
    return child !== null && child.connected ? child : null;
  }

  isWorker(instanceId: string): boolean {
    return this.#byId.has(instanceId);
  }

  /** Whether any worker can take a connection now. */
  anyUp(): boolean {
    return this.#slots.some((s) => s.child?.connected === true);
  }

  workers(): WorkerInfo[] {
    return this.#slots.map((s) => ({
      index: s.index, instanceId: s.instanceId, port: s.port, pid: s.child?.pid ?? null,
      up: s.child?.connected === true, restarts: s.restarts,
    }));
  }

  /** Asks every worker to drain (paced over its CLUSTER_DRAIN_WINDOW) and waits until all exited. */
  drain(): Promise<void> {
    this.#stopping = true;
    for (const s of this.#slots) {
      if (s.timer) clearTimeout(s.timer);
      s.timer = null;
      const child = s.child;
      if (child?.connected) child.send({ type: MSG_DRAIN }, (err) => {
        if (err) child.kill('SIGTERM');
      });
      else child?.kill('SIGTERM');
    }
    return this.exited();
  }

  /** Stops every worker now: SIGTERM, then SIGKILL after stopTimeoutMs. */
  async stop(): Promise<void> {
    this.#stopping = true;
    const timeout = this.#o.stopTimeoutMs ?? 5000;
    for (const s of this.#slots) {
      if (s.timer) clearTimeout(s.timer);
      s.timer = null;
      s.child?.kill('SIGTERM');
    }
    const kill = setTimeout(() => {
      for (const s of this.#slots) s.child?.kill('SIGKILL');
    }, timeout);
    try {
      await this.exited();
    } finally {
      clearTimeout(kill);
    }
  }

  private exited(): Promise<void> {
    this.#exits ??= Promise.all(this.#slots.map((s) => {
      const child = s.child;
      if (child === null || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
      return new Promise<void>((resolve) => child.once('exit', () => resolve()));
    })).then(() => undefined);
    return this.#exits;
  }

  private spawn(slot: Slot): void {
    const o = this.#o;
    const env: Record<string, string | undefined> = {
      ...(o.env ?? process.env),
      [WORKER_ID_ENV]: String(slot.index),
      PORT: String(slot.port),
      CLUSTER_INSTANCE_ID: slot.instanceId,
      CLUSTER_ENDPOINT_URL: workerEndpoint(o.endpointUrl, slot.port),
    };
    const child = fork(o.script ?? (process.argv[1] as string), [...(o.args ?? process.argv.slice(2))], { env, stdio: 'inherit' });
    slot.child = child;
    slot.startedAt = Date.now();
    o.logger.info('workers.started', { worker: slot.instanceId, pid: child.pid, port: slot.port });
    // An error on the channel (a worker gone mid-send) must never become an uncaught exception.
    child.on('error', (err) => o.logger.once('warn', `worker_error:${slot.index}`, 'workers.error', { worker: slot.instanceId, error: err }));
    child.once('exit', (code, signal) => {
      if (slot.child === child) slot.child = null;
      if (this.#stopping) {
        o.logger.info('workers.exited', { worker: slot.instanceId, code, signal });
        return;
      }
      const ranMs = Date.now() - slot.startedAt;
      slot.crashes = ranMs >= STABLE_MS ? 1 : slot.crashes + 1;
      const delayMs = Math.min(o.maxBackoffMs ?? 10_000, (o.backoffMs ?? 250) * 2 ** (slot.crashes - 1));
      o.logger.warn('workers.crashed', { worker: slot.instanceId, code, signal, ranMs, restartInMs: delayMs });
      slot.timer = setTimeout(() => {
        slot.timer = null;
        if (this.#stopping) return;
        slot.restarts++;
        this.spawn(slot);
      }, delayMs);
      slot.timer.unref();
    });
  }
}
