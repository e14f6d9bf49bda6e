/**
 * CLUSTER_WORKERS_COUNT (issue 14), as attach() wires it: in the primary, start the workers and
 * hand connections to them; in a worker, take the connections the primary hands over and drain
 * when it asks (or when it is gone). A process without workers gets a no-op.
 */
import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import type { ClusterConfig } from '../config';
import type { Member } from '../discovery/view';
import type { Logger } from '../log';
import type { WorkersStats } from '../outcomes';
import { acceptHandoffs, installHandoff, type Head } from './handoff';
import { MSG_DRAIN, WorkerPool } from './primary';
import { roleOf, type Role } from './role';

export { roleOf, workerConfig, workerEndpoint, workerInstanceId, WORKER_ID_ENV, type Role } from './role';
export { WorkerPool, type WorkerInfo, type PoolOptions } from './primary';
export { installHandoff, acceptHandoffs, parseHead, type Head, type HandoffStats } from './handoff';
export type { WorkersStats } from '../outcomes';

/** attach() options for the workers (CLUSTER_WORKERS_COUNT / `workersCount` turns them on). */
export interface WorkersOptions {
  /** Worker i's private port (i from 1), given the primary's; default primary port + i. */
  readonly port?: (index: number, primaryPort: number) => number;
  /** The program a worker runs; default this process's own (process.argv[1] and its arguments). */
  readonly script?: string;
  readonly args?: readonly string[];
}


export interface WorkersRole {
  readonly role: Role;
  /**
   * For the gateway (GatewayDeps.chosenHere): true once for the first request of a connection
   * the primary handed to this worker, which it routed here already.
   */
  chosenHere(req: object): boolean;
  stats(): WorkersStats;
  /** Primary: drains every worker and waits for them to exit. */
  drain(): Promise<void>;
  close(): Promise<void>;
}

export interface WorkersDeps {
  readonly server: Server;
  readonly config: ClusterConfig;
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly logger: Logger;
  readonly options?: WorkersOptions;
  /** The gateway's decision for a connection's first request (Gateway.decideHead). */
  readonly decideHead: (head: Head, accept: (m: Member) => boolean) => Member | null;
  /** Drain and deregister this process (ClusterHandle.drain then close). */
  readonly drainSelf: () => Promise<void>;
}

export function startWorkersRole(d: WorkersDeps): WorkersRole {
  const role = roleOf(d.config, d.env);
  if (role.kind === 'worker') return workerRole(d, role.index);
  if (role.kind === 'primary') return primaryRole(d, role.count);
  return { role, chosenHere: () => false, stats: () => ({ role: 'single' }), drain: () => Promise.resolve(), close: () => Promise.resolve() };
}

function workerRole(d: WorkersDeps, index: number): WorkersRole {
  let received = 0;
  const chosen = new WeakSet<Socket>();
  const stopAccepting = acceptHandoffs(d.server, chosen, () => void received++);
  let leaving = false;
  // Asked by the primary, or the primary is gone: drain like on SIGTERM, then end this process
  // through its own SIGTERM handling (the app's shutdown runs; drainOnSignals finds the drain done).
  const leave = (why: string): void => {
    if (leaving) return;
    leaving = true;
    d.logger.info('workers.leaving', { worker: index, why });
    void d.drainSelf().catch(() => undefined).then(() => process.kill(process.pid, 'SIGTERM'));
  };
  const onMessage = (m: unknown): void => {
    if (typeof m === 'object' && m !== null && (m as { type?: unknown }).type === MSG_DRAIN) leave('primary drains');
  };
  const onDisconnect = (): void => leave('primary gone');
  process.on('message', onMessage);
  process.on('disconnect', onDisconnect);
  return {
    role: { kind: 'worker', index },
    chosenHere(req) {
      const socket = (req as { socket?: Socket }).socket;
      return socket !== undefined && chosen.delete(socket);
    },
    stats: () => ({ role: 'worker', index, received }),
    drain: () => Promise.resolve(),
    async close() {
      stopAccepting();
      process.off('message', onMessage);
      process.off('disconnect', onDisconnect);
    },
  };
}

function primaryRole(d: WorkersDeps, count: number): WorkersRole {
  const { server, config, logger } = d;
  let pool: WorkerPool | null = null;
  let handoff: ReturnType<typeof installHandoff> | null = null;
  let closed = false;
  const isTls = typeof (server as unknown as { addContext?: unknown }).addContext === 'function';
  const start = (): void => {
    if (closed || pool !== null) return;
    const address = server.address();
    const primaryPort = typeof address === 'object' && address !== null ? address.port : 0;
    const port = d.options?.port ?? ((i: number, p: number) => p + i);
    pool = new WorkerPool({
      count, instanceId: config.instanceId, endpointUrl: config.endpointUrl, logger,
      port: (i) => port(i, primaryPort), script: d.options?.script, args: d.options?.args, env: d.env,
    });
    pool.start();
    if (isTls) {
      logger.warn('workers.no_handoff', {
        note: 'a TLS connection can\'t change process: the workers get their sessions through the usual hop',
        fix: 'terminate TLS in front of this process to hand connections to the workers directly',
      });
      return;
    }
    const p = pool;
    handoff = installHandoff(server, {
      anyUp: () => p.anyUp(),
      decide: (head) => {
        const m = d.decideHead(head, (member) => p.process(member.id) !== null);
        return m === null ? null : p.process(m.id);
      },
    });
  };
  if (server.listening) start();
  else server.once('listening', start);
  logger.info('workers.primary', { count });
  return {
    role: { kind: 'primary', count },
    chosenHere: () => false,
    stats: () => ({ role: 'primary', workers: pool?.workers() ?? [], ...(handoff && { handoff: handoff.stats() }) }),
    drain: () => pool?.drain() ?? Promise.resolve(),
    async close() {
      closed = true;
      server.off('listening', start);
      handoff?.remove();
      await pool?.stop();
    },
  };
}
