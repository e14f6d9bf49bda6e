// The reference instance (examples/node-ddp-app/instance.ts) with test-only hooks, in its own
// process. Prints "listening <url>" when ready.
import v8 from 'node:v8';
import vm from 'node:vm';
import { failed, runInstance, startInstance } from '../../examples/node-ddp-app/instance';

async function main(): Promise<void> {
  const instance = await startInstance();
  const { cluster } = instance;
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
  runInstance(instance);
}

main().catch(failed);
