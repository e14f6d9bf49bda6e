import assert from 'node:assert/strict';
import type { WhoamiResult } from './support/ddp-app';
import {
  getSockjsInfo, rawXhrDdp, sockjsDdp, simpleDdp, wsDdp, type DdpClient,
} from './support/ddp-clients';
import { mongo, uniqueDbUrl } from './support/mongo';
import { freePort, startCluster, type Instance } from './support/cluster';

/** Runs `fn` over `items` with at most `limit` in flight. */
async function pool<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T, i);
    }
  }));
  return out;
}

function spread(ids: readonly string[]): { counts: Record<string, number>; maxOverMean: number } {
  const counts: Record<string, number> = {};
  for (const id of ids) counts[id] = (counts[id] ?? 0) + 1;
  const values = Object.values(counts);
  const mean = ids.length / values.length;
  return { counts, maxOverMean: Math.max(...values) / mean };
}

const whoami = async (c: DdpClient | { call: (m: string) => Promise<unknown> }): Promise<WhoamiResult> => (await c.call('whoami')) as WhoamiResult;

describe('balancer (three real instances, real clients)', function () {
  this.timeout(180_000);
  let url: string;
  let cluster: Instance[] = [];
  let clients: { close(): Promise<void> }[] = [];
  const figures: Record<string, unknown> = {};

  beforeEach(async function () {
    url = uniqueDbUrl(mongo().url, (this.currentTest?.title ?? 'x').replace(/\W+/g, '_').slice(0, 24));
    clients = [];
  });

  afterEach(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await Promise.all(cluster.map((i) => i.close()));
    cluster = [];
  });

  after(() => {
    process.stdout.write(`      figures: ${JSON.stringify(figures)}\n`);
  });

  const [A, B, C] = [0, 1, 2];
  const at = (i: number): Instance => cluster[i] as Instance;
  const track = <T extends { close(): Promise<void> }>(c: T): T => {
    clients.push(c);
    return c;
  };

  it('pins xhr-polling sessions entering one instance across all three, evenly, and keeps each on one instance', async () => {
    cluster = await startCluster(['a', 'b', 'c'], url);
    const results = await pool(Array.from({ length: 300 }), 30, async () => {
      const c = track(await sockjsDdp(at(A).url, { transports: ['xhr-polling'] }));
      const first = await whoami(c);
      const second = await whoami(c);
      assert.equal(second.instanceId, first.instanceId, 'every request of a session reaches one instance');
      assert.equal(first.transport, 'xhr-polling');
      assert.match(c.info?.base_url ?? '', new RegExp(`^${at(A).url}/cluster-ddp/[0-9a-f]+/web$`));
      return first.instanceId;
    });
    const s = spread(results);
    figures.polling300 = s;
    assert.deepEqual(Object.keys(s.counts).sort(), ['a', 'b', 'c']);
    assert.ok(s.maxOverMean <= 1.15, `max/mean ${s.maxOverMean} ${JSON.stringify(s.counts)}`);
    // The instances agree: their own session counts match where the clients landed.
    assert.deepEqual(cluster.map((i) => i.app.sessionCount()), ['a', 'b', 'c'].map((id) => s.counts[id]));
  });

  it('keeps a session on its instance when its requests alternate between balancers A, B, C', async () => {
    cluster = await startCluster(['a', 'b', 'c'], url);
    const bases = cluster.map((i) => i.url);
    const results = await pool(Array.from({ length: 300 }), 30, async (_, n) => {
      // Sessions enter A (sockjs info), then their requests rotate over A, B, C.
      const info = await getSockjsInfo(`${at(A).url}/sockjs`);
      const pinned = new URL(info.base_url as string).pathname;
      const session = await rawXhrDdp((_step, k) => `${bases[(n + k) % 3] as string}${pinned}`);
      const who = (await session.call('whoami')) as WhoamiResult;
      const again = (await session.call('whoami')) as WhoamiResult;
      assert.equal(again.instanceId, who.instanceId);
      const visited = new Set(session.requests.map((r) => r.base.slice(0, r.base.indexOf('/cluster-ddp'))));
      assert.equal(visited.size, 3, 'the requests really went through all three balancers');
      return who.instanceId;
    });
    const s = spread(results);
    figures.alternating300 = s;
    assert.ok(s.maxOverMean <= 1.15, `max/mean ${s.maxOverMean} ${JSON.stringify(s.counts)}`);
  });

  it('maps unpinned polling sessions by rendezvous, the same from every balancer', async () => {
    cluster = await startCluster(['a', 'b', 'c'], url);
    const bases = cluster.map((i) => `${i.url}/sockjs`);
    const results = await pool(Array.from({ length: 60 }), 20, async (_, n) => {
      const session = await rawXhrDdp((_step, k) => bases[(n + k) % 3] as string);
      const who = (await session.call('whoami')) as WhoamiResult;
      assert.equal(((await session.call('whoami')) as WhoamiResult).instanceId, who.instanceId);
      return who.instanceId;
    });
    assert.equal(new Set(results).size, 3, 'all three instances get unpinned sessions');
  });

  it('balances websocket, raw /websocket and third-party DDP clients, with method round-trips', async () => {
    cluster = await startCluster(['a', 'b', 'c'], url);
    const viaSockjs = await pool(Array.from({ length: 60 }), 20, async () => {
      const c = track(await sockjsDdp(at(A).url, { transports: ['websocket'] }));
      const who = await whoami(c);
      assert.equal(who.transport, 'websocket');
      assert.deepEqual(await c.call('echo', { x: 1 }), { x: 1 });
      return who.instanceId;
    });
    const viaRaw = await pool(Array.from({ length: 60 }), 20, async () => {
      const c = track(await wsDdp(at(B).url));
      const docs = await c.subscribe('items');
      assert.equal(docs.length, 3);
      return (await whoami(c)).instanceId;
    });
    const viaSimple = await pool(Array.from({ length: 15 }), 5, async () => {
      const c = track(await simpleDdp(at(C).url));
      return (await whoami(c)).instanceId;
    });
    figures.websocket60 = spread(viaSockjs);
    figures.rawWebsocket60 = spread(viaRaw);
    for (const ids of [viaSockjs, viaRaw]) {
      assert.equal(new Set(ids).size, 3);
      assert.ok(spread(ids).maxOverMean <= 1.3, JSON.stringify(spread(ids)));
    }
    assert.ok(viaSimple.every((id) => ['a', 'b', 'c'].includes(id)));
  });

  it('pins to a balancer URL so the client connects straight to the endpoint, with no hop', async () => {
    // Every instance advertises its own public balancer URL (meteorhacks' multi-balancer setup);
    // A has self weight 0, so every session entering A is pinned elsewhere.
    const ports = await Promise.all(['a', 'b', 'c'].map(() => freePort()));
    cluster = await startCluster(['a', 'b', 'c'], url, (id) => {
      const port = ports[['a', 'b', 'c'].indexOf(id)] as number;
      return { port, attach: { balancerUrl: `http://127.0.0.1:${port}`, selfWeight: id === 'a' ? 0 : 1 } };
    });
    const before = cluster.map((i) => i.cluster.stats());
    for (let n = 0; n < 6; n++) {
      const c = track(await sockjsDdp(at(A).url, { transports: ['xhr-polling'] }));
      const who = await whoami(c);
      assert.notEqual(who.instanceId, 'a', 'self weight 0 sends sessions away');
      const target = cluster.find((i) => i.id === who.instanceId) as Instance;
      assert.ok(c.info?.base_url?.startsWith(`${target.url}/cluster-ddp/`), `${c.info?.base_url} names ${target.url}`);
    }
    const after = cluster.map((i) => i.cluster.stats());
    assert.equal(after[A]!.hopsOut - before[A]!.hopsOut, 0, 'A proxied nothing');
    assert.equal(after.reduce((s, x) => s + x.hopsIn, 0) - before.reduce((s, x) => s + x.hopsIn, 0), 0, 'no hop anywhere');
    assert.ok(after[A]!.pinned - before[A]!.pinned >= 6);
    figures.pinnedDirect = { hopsOut: after.map((x) => x.hopsOut), hopsIn: after.map((x) => x.hopsIn), pinnedByA: after[A]!.pinned };
  });
});
