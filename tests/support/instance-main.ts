// One fixture DDP app with the balancer attached, configured by CLUSTER_* env vars, in its own
// process. Prints "listening <url>" when ready. CLUSTER_ENDPOINT_URL is derived from the port.
import { attach } from '../../lib/attach';
import { drainOnSignals } from '../../lib/signals';
import v8 from 'node:v8';
import vm from 'node:vm';
import { createDdpApp } from './ddp-app';

async function main(): Promise<void> {
  const app = createDdpApp({ instanceId: process.env.CLUSTER_INSTANCE_ID });
  await app.listen(Number(process.env.PORT ?? 0), '127.0.0.1');
  const cluster = attach(app.server, {
    endpointUrl: app.origin, sessionCount: () => app.sessionCount(), sessions: () => app.sessions.values(),
  });
  // An app whose cluster event listeners are buggy (tests of issue 12): every listener throws, and
  // an async one rejects.
  if (process.env.TEST_THROWING_LISTENERS === '1') {
    for (const event of ['view', 'join', 'leave', 'change', 'duplicate', 'outage', 'recovered'] as const) {
      cluster.on(event, () => {
        throw new Error(`app bug in a ${event} listener`);
      });
      cluster.on(event, async () => {
        throw new Error(`async app bug in a ${event} listener`);
      });
    }
  }
  // Memory figures after a full GC on SIGUSR2, as a line `memory {"rss":…,"heap":…}` (tests of issue 12).
  if (process.env.TEST_MEMORY_REPORT === '1') {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    process.on('SIGUSR2', () => {
      gc();
      gc();
      process.stdout.write(`memory ${JSON.stringify({ rss: process.memoryUsage.rss(), heap: process.memoryUsage().heapUsed, at: Date.now() })}\n`);
    });
  }
  // A worker (CLUSTER_WORKERS_COUNT, issue 14) shares the primary's stdout: only the primary says "listening".
  if (process.env.CLUSTER_WORKER_ID) process.stdout.write(`worker ${process.env.CLUSTER_WORKER_ID} up ${app.url}\n`);
  else process.stdout.write(`listening ${app.url}\n`);
  // SIGTERM/SIGINT: drain over CLUSTER_DRAIN_WINDOW, deregister, then exit (the app's own
  // shutdown runs after, as a Meteor app's would).
  drainOnSignals({
    drain: () => cluster.drain(),
    close: () => cluster.close().then(() => app.close()),
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`instance failed: ${String(err)}\n`);
  process.exit(1);
});
