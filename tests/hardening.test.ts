/**
 * Issue 12 (hardening): bounded under hostile input, no spoofing across instances, app callbacks
 * isolated. Real instances, real sockets; each test names the finding it covers.
 */
import assert from 'node:assert/strict';
import { ROUTE_REASONS } from '../lib/reasons';
import { startCluster, type Instance } from './support/cluster';
import { httpRequest } from './support/ddp-clients';
import { mongo, uniqueDbUrl } from './support/mongo';

const PASSWORD = 'hardening-dashboard-password';
const basic = { authorization: `Basic ${Buffer.from(`p:${PASSWORD}`).toString('base64')}` };

/** Runs `fn` for 0..n-1 with at most `limit` in flight. */
async function times(n: number, limit: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < n) await fn(next++);
  }));
}

describe('hardening (issue 12)', function () {
  this.timeout(180_000);
  let url: string;
  let cluster: Instance[] = [];

  beforeEach(function () {
    url = uniqueDbUrl(mongo().url, (this.currentTest?.title ?? 'x').replace(/\W+/g, '_').slice(0, 24));
  });
  afterEach(async () => {
    await Promise.all(cluster.map((i) => i.close()));
    cluster = [];
  });

  const metricsOf = async (i: Instance): Promise<string> => {
    const r = await httpRequest('GET', `${i.url}/cluster/metrics`, undefined, { headers: basic });
    assert.equal(r.status, 200);
    return r.body;
  };

  it('1. routing reasons are a fixed set: 2,000 junk service names add no series and no table entries', async () => {
    cluster = await startCluster(['a'], url, () => ({ attach: { dashboardPassword: PASSWORD } }));
    const [a] = cluster as [Instance];
    await httpRequest('GET', `${a.url}/svc-warmup/sockjs/info`);
    const before = (await metricsOf(a)).length;
    await times(2000, 20, async (i) => {
      const r = await httpRequest('GET', `${a.url}/svc${i}/sockjs/info`);
      assert.equal(r.status, 404);
      assert.ok(!r.body.includes(`svc${i}`), 'the reply names no client-chosen string');
    });
    const after = (await metricsOf(a)).length;
    assert.ok(after <= before * 1.1, `/cluster/metrics grew from ${before} to ${after} bytes`);
    const reasons = Object.keys(a.cluster.stats().byReason);
    for (const r of reasons) assert.ok((ROUTE_REASONS as readonly string[]).includes(r.slice(r.indexOf(':') + 1)), `unknown reason ${r}`);
    assert.ok(reasons.length <= 4 * ROUTE_REASONS.length);
  });
});
