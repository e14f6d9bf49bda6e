/**
 * One reference DDP app with the balancer attached, configured by CLUSTER_* env vars, in its own
 * process (the demo and the tests spawn it). Prints "listening <url>" when ready (a worker of
 * CLUSTER_WORKERS_COUNT prints "worker <i> up <url>" instead).
 * CLUSTER_ENDPOINT_URL is derived from the port.
 *
 *   node --import tsx examples/node-ddp-app/instance.ts
 */
import { attach, type ClusterHandle } from '../../lib/attach';
import { drainOnSignals } from '../../lib/signals';
import { WORKER_ID_ENV } from '../../lib/workers/role';
import { createDdpApp, type DdpApp } from './app';

export interface Instance {
  app: DdpApp;
  cluster: ClusterHandle;
}

/** Starts the app on $PORT (default: any free port) and attaches the balancer to it. */
export async function startInstance(): Promise<Instance> {
  const app = createDdpApp({ instanceId: process.env.CLUSTER_INSTANCE_ID });
  await app.listen(Number(process.env.PORT ?? 0), '127.0.0.1');
  const cluster = attach(app.server, {
    endpointUrl: app.origin, sessionCount: () => app.sessionCount(), sessions: () => app.sessions.values(),
    sockjsServer: app.streamServer.server,
  });
  return { app, cluster };
}

/** Announces the instance and drains it on SIGTERM/SIGINT, then closes the cluster and the app. */
export function runInstance({ app, cluster }: Instance): void {
  // A worker (CLUSTER_WORKERS_COUNT) shares the primary's stdout: only the primary says "listening".
  const worker = process.env[WORKER_ID_ENV];
  process.stdout.write(worker ? `worker ${worker} up ${app.url}\n` : `listening ${app.url}\n`);
  // SIGTERM/SIGINT: drain over CLUSTER_DRAIN_WINDOW, deregister, then exit (the app's own
  // shutdown runs after, as a Meteor app's would).
  drainOnSignals({
    drain: () => cluster.drain(),
    close: () => cluster.close().then(() => app.close()),
  });
}

export function failed(err: unknown): never {
  process.stderr.write(`instance failed: ${String(err)}\n`);
  process.exit(1);
}

if (require.main === module) {
  startInstance().then(runInstance, failed);
}
