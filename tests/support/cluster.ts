/**
 * Real clusters for tests: fixture DDP apps (sockjs installed Meteor's way) with the balancer
 * attached, registered in the test run's Mongo-compatible server. In-process instances for most
 * tests; child processes where a test needs kill -9.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { attach, type AttachOptions, type ClusterHandle } from '../../lib/attach';
import type { MembershipView } from '../../lib/discovery/view';
import { createLogger, type LogSink } from '../../lib/log';
import { createDdpApp, type DdpApp, type DdpAppOptions } from '../../examples/node-ddp-app/app';
import { EXAMPLE_SECRET } from '../../examples/node-ddp-app/secret';
import { waitForEvent } from './wait';

export const TEST_SECRET = EXAMPLE_SECRET;

export interface Instance {
  readonly id: string;
  readonly app: DdpApp;
  readonly cluster: ClusterHandle;
  /** http://127.0.0.1:<port> (plus ROOT_URL_PATH_PREFIX). */
  readonly url: string;
  readonly logs: string[];
  close(): Promise<void>;
}

export interface InstanceOptions {
  readonly id: string;
  readonly discoveryUrl: string;
  readonly app?: DdpAppOptions;
  readonly attach?: AttachOptions;
  /** Listen port; 0 (default) picks a free one. */
  readonly port?: number;
}

export async function startInstance(o: InstanceOptions): Promise<Instance> {
  const app = createDdpApp({ instanceId: o.id, ...o.app });
  await app.listen(o.port ?? 0, '127.0.0.1');
  const logs: string[] = [];
  const sink: LogSink = (line) => void logs.push(line);
  const cluster = attach(app.server, {
    discoveryUrl: o.discoveryUrl,
    service: 'web',
    endpointUrl: app.origin,
    secret: TEST_SECRET,
    instanceId: o.id,
    pathPrefix: app.rootUrlPathPrefix,
    sessionCount: () => app.sessionCount(),
    sessions: () => app.sessions.values(),
    sockjsServer: app.streamServer.server,
    logger: createLogger('debug', { instance: o.id }, sink),
    env: {},
    ...o.attach,
  });
  return {
    id: o.id, app, cluster, url: app.url, logs,
    async close() {
      await cluster.close();
      await app.close();
    },
  };
}

/** Resolves when `cluster`'s view satisfies `pred`. */
export function waitView(cluster: ClusterHandle, what: string, pred: (v: MembershipView) => boolean, timeoutMs = 20_000): Promise<MembershipView> {
  const emitter = { on: cluster.on, off: cluster.off } as unknown as import('node:events').EventEmitter;
  return waitForEvent(emitter, 'view', () => (pred(cluster.view()) ? cluster.view() : undefined), what, timeoutMs);
}

/** A free loopback port (for instances that must know their URL before they listen). */
export { freePort } from './mongo';

export const servingIds = (v: MembershipView): string[] =>
  v.members.filter((m) => m.healthy && m.state === 'serving').map((m) => m.id);

/** Starts `ids.length` instances and waits until every one sees all of them healthy and serving. */
export async function startCluster(ids: readonly string[], discoveryUrl: string,
  per: (id: string) => Partial<InstanceOptions> = () => ({})): Promise<Instance[]> {
  const instances = await Promise.all(ids.map((id) => startInstance({ id, discoveryUrl, ...per(id) })));
  await Promise.all(instances.map((i) => waitView(i.cluster, `${i.id} sees ${ids.length}`,
    (v) => servingIds(v).length === ids.length && v.members.every((m) => m.load.capacity > 1 || m.self))));
  return instances;
}

export interface ChildInstance {
  readonly id: string;
  readonly url: string;
  readonly proc: ChildProcess;
  /** Log lines (JSON) the instance printed on stdout, with the time they arrived. */
  readonly logs: { at: number; line: string }[];
  readonly exited: Promise<void>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** An instance in its own process (tests/support/instance-main.ts), for kill -9. */
export async function spawnInstance(id: string, env: Record<string, string>): Promise<ChildInstance> {
  const proc = spawn(process.execPath, ['--import', 'tsx', 'tests/support/instance-main.ts'], {
    env: { ...process.env, CLUSTER_INSTANCE_ID: id, CLUSTER_SECRET: TEST_SECRET, CLUSTER_SERVICE: 'web', CLUSTER_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream });
  const logs: { at: number; line: string }[] = [];
  // Warnings and errors go to stderr: keep them with the rest, out of the test report.
  createInterface({ input: proc.stderr as NodeJS.ReadableStream }).on('line', (line) => {
    if (logs.length < 10_000) logs.push({ at: Date.now(), line });
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const ready = new Promise<string>((resolve, reject) => {
    lines.on('line', (line) => {
      const m = /^listening (\S+)$/.exec(line);
      if (m?.[1]) resolve(m[1]);
      else if (logs.length < 10_000) logs.push({ at: Date.now(), line });
    });
    proc.once('exit', (code) => reject(new Error(`instance ${id} exited with ${code} before listening: ${logs.slice(-5).map((l) => l.line).join('\n')}`)));
  });
  const url = await ready;
  return {
    id, url, proc, logs, exited,
    async kill(signal = 'SIGKILL') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = once(proc, 'exit');
      proc.kill(signal);
      await exited;
    },
  };
}
