// One fixture DDP app with the balancer attached, configured by CLUSTER_* env vars, in its own
// process. Prints "listening <url>" when ready. CLUSTER_ENDPOINT_URL is derived from the port.
import { attach } from '../../lib/attach';
import { createDdpApp } from './ddp-app';

async function main(): Promise<void> {
  const app = createDdpApp({ instanceId: process.env.CLUSTER_INSTANCE_ID });
  await app.listen(Number(process.env.PORT ?? 0), '127.0.0.1');
  const cluster = attach(app.server, { endpointUrl: app.origin, sessionCount: () => app.sessionCount() });
  process.stdout.write(`listening ${app.url}\n`);
  const stop = (): void => void cluster.close().then(() => app.close()).then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`instance failed: ${String(err)}\n`);
  process.exit(1);
});
