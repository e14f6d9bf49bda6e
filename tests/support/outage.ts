import assert from 'node:assert/strict';
import type { MongoServer } from './mongo';
import { TcpRelay, singleHostOf } from './tcp-relay';

export interface Outage {
  /** The discovery URL clients must use for the outage to reach them. */
  readonly url: string;
  down(): Promise<void>;
  up(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A way to take the discovery database away and bring it back: stop and restart the real server
 * when the harness owns it; otherwise (an external CLUSTER_TEST_MONGO_URL) cut a loopback relay in
 * front of it, which clients experience the same way.
 */
export async function outageControl(server: MongoServer, url: string): Promise<Outage> {
  if (server.controllable) {
    return { url, down: () => server.stop(), up: () => server.start(), close: async () => undefined };
  }
  const target = singleHostOf(url);
  assert.ok(target, 'an outage test needs a single-host mongodb:// URL or a harness-owned server');
  const relay = new TcpRelay(target.host, target.port);
  await relay.open();
  const relayed = url.replace(`${target.host}:${target.port}`, `127.0.0.1:${relay.port}`) + (url.includes('?') ? '&' : '?') + 'directConnection=true';
  return { url: relayed, down: () => relay.cut(), up: async () => void (await relay.open()), close: () => relay.close() };
}
