import assert from 'node:assert/strict';
import { once } from 'node:events';
import WebSocket from 'ws';
import type { WhoamiResult } from '../examples/node-ddp-app/app';
import {
  getSockjsInfo, httpRequest, rawXhrDdp, sockjsDdp, simpleDdp, wsDdp, type DdpClient,
} from '../examples/node-ddp-app/clients';
import { mongo, uniqueDbUrl } from './support/mongo';
import { HOP_HEADER, makeHop } from '../lib/balancer/hop';
import { keysFrom } from '../lib/sign';
import { TEST_SECRET, freePort, spawnInstance, startCluster, startInstance, waitView, type ChildInstance, type Instance } from './support/cluster';
import { eventually } from './support/wait';
import { rawRequest } from './support/raw';

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
  const children: ChildInstance[] = [];
  const figures: Record<string, unknown> = {};

  beforeEach(async function () {
    url = uniqueDbUrl(mongo().url, (this.currentTest?.title ?? 'x').replace(/\W+/g, '_').slice(0, 24));
    clients = [];
  });

  afterEach(async () => {
    await Promise.all(children.splice(0).map((c) => c.kill()));
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
      assert.match(c.info?.base_url ?? '', new RegExp(`^${at(A).url}/cluster-ddp/[0-9a-f]+(\\.[0-9a-f]+)?/web$`));
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

  describe('where new sessions go when load is skewed or arrival is even', () => {
    const IDS = ['a', 'b', 'c'];
    /** max/mean over all three instances (one that got nothing counts as 0). */
    const maxOverMean = (ids: readonly string[]): number => Math.max(...IDS.map((id) => ids.filter((x) => x === id).length)) / (ids.length / IDS.length);
    /** Resolves once A's view holds reports of every instance (A's own heartbeat included) taken after `t`. */
    const reportsAfter = (t: number): Promise<unknown> => eventually(() => {
      const v = at(A).cluster.view();
      return IDS.every((id) => (v.byId.get(id)?.heartbeatAt ?? 0) > t);
    }, 'fresh load reports of a, b and c at A');
    const allClosed = (): Promise<unknown> => eventually(() => cluster.every((i) => i.app.sessionCount() === 0), 'every session closed');
    /** `n` websocket sessions entering A one after another, kept open; where each landed. */
    const enterA = async (n: number): Promise<string[]> => {
      const out: string[] = [];
      for (let k = 0; k < n; k++) out.push((await whoami(track(await wsDdp(at(A).url)))).instanceId);
      return out;
    };

    it('does not hold its stale report of 100 against A: right after the burst closed, A takes its share of the next 30 sessions and no peer gets more than 1.2× the mean', async () => {
      cluster = await startCluster(IDS, url);
      const hashA = at(A).cluster.view().self!.endpointHash;
      const burst = await pool(Array.from({ length: 100 }), 20, async () => track(await wsDdp(`${at(A).url}/cluster-ddp/${hashA}/web`)));
      assert.equal(at(A).app.sessionCount(), 100, 'the burst is on A');
      // A's own last report says 100: the stale figure it used to judge itself by.
      await eventually(() => at(A).cluster.view().self!.load.sessions === 100, 'A reports its 100 sessions');
      await Promise.all(burst.map((c) => c.close()));
      await allClosed();
      const next = await enterA(30);
      figures.afterBurstClosed = spread(next).counts;
      // Judged by its stale 100, A would send every one away (0 / 15 / 15). While the peers'
      // reports lag behind, A assumes they took as many as it kept (even arrival, see pending.ts),
      // so A may keep somewhat more than a third here; what it must not do is starve itself.
      const counts = JSON.stringify(spread(next).counts);
      const mean = next.length / IDS.length;
      assert.ok(next.filter((x) => x === 'a').length >= 0.7 * mean, `A took its share: ${counts}`);
      for (const id of ['b', 'c']) assert.ok(next.filter((x) => x === id).length <= 1.2 * mean, `${id} within 1.2× the mean: ${counts}`);
    });

    it('spreads the next 30 sessions entering A within 1.2 max/mean after sessions it routed to peers vanished before their report', async () => {
      cluster = await startCluster(IDS, url);
      // A is busy (30 sessions pinned to it), so it routes new sessions to b and c ...
      const hashA = at(A).cluster.view().self!.endpointHash;
      const held = await pool(Array.from({ length: 30 }), 10, async () => track(await wsDdp(`${at(A).url}/cluster-ddp/${hashA}/web`)));
      await eventually(() => at(A).cluster.view().self!.load.sessions === 30, 'A reports its 30 sessions');
      // ... which close again at once, one after another: hardly any is open when b or c report.
      const routed: string[] = [];
      for (let k = 0; k < 20; k++) {
        const c = await wsDdp(at(A).url);
        routed.push((await whoami(c)).instanceId);
        await c.close();
      }
      assert.ok(!routed.includes('a'), `A routed them all to its peers: ${JSON.stringify(spread(routed).counts)}`);
      await Promise.all(held.map((c) => c.close()));
      await allClosed();
      await reportsAfter(Date.now());
      // Every instance is empty now.
      const next = await enterA(30);
      figures.afterRoutedVanished = { routed: spread(routed).counts, next: spread(next).counts };
      assert.ok(maxOverMean(next) <= 1.2, `max/mean ${maxOverMean(next)} ${JSON.stringify(spread(next).counts)}`);
    });

    it('serves most sessions where they land when they arrive evenly at A, B and C: proxies at most 10 % of them (random placement: 2/3)', async () => {
      cluster = await startCluster(IDS, url);
      const before = cluster.map((i) => i.cluster.stats());
      // Round robin over the entries, six sessions setting up at a time.
      const landed = await pool(Array.from({ length: 180 }), 6, async (_, n) => {
        const entry = cluster[n % 3] as Instance;
        return (await whoami(track(await wsDdp(entry.url)))).instanceId;
      });
      const after = cluster.map((i) => i.cluster.stats());
      const d = (k: 'served' | 'hopsIn' | 'proxied'): number => after.reduce((s, x, i) => s + x[k] - before[i]![k], 0);
      const decisions = d('served') - d('hopsIn') + d('proxied');
      assert.equal(decisions, 180, 'one routing decision per session at its entry');
      const share = d('proxied') / decisions;
      figures.evenArrival = { proxiedShare: share, counts: spread(landed).counts };
      // With six sessions setting up at once, each instance guesses its peers' unreported new
      // sessions (pending.ts). Before peers' unreported sessions were taken as at least what this
      // instance kept since their report, 180 sessions measured 0 to 0.18 in 10 runs here; since,
      // 0 in 8 runs. Random placement would proxy 2/3. The bench measures random arrival.
      assert.ok(share <= 0.1, `proxied share ${share} ${JSON.stringify(spread(landed).counts)}`);
    });
  });

  it('answers sockjs info as sockjs would, with Meteor switches and CORS, and base_url (a sized body, not chunked)', async () => {
    cluster = await startCluster(['a', 'b'], url, () => ({ attach: { disableWebsockets: true, useJsessionid: true } }));
    const res = await httpRequest('GET', `${at(A).url}/sockjs/info`, undefined, { headers: { origin: 'https://app.example.com' } });
    assert.equal(res.status, 200);
    const info = JSON.parse(res.body) as Record<string, unknown>;
    assert.equal(info.websocket, false);
    assert.equal(info.cookie_needed, true);
    assert.deepEqual(info.origins, ['*:*']);
    assert.equal(typeof info.entropy, 'number');
    assert.match(String(info.base_url), new RegExp(`^${at(A).url}/cluster-ddp/[0-9a-f]{20}/web$`));
    assert.equal(res.headers['access-control-allow-origin'], 'https://app.example.com');
    assert.equal(res.headers['access-control-allow-credentials'], 'true');
    assert.match(String(res.headers['cache-control']), /no-store/);
    assert.equal(res.headers['content-length'], String(Buffer.byteLength(res.body)));
    assert.equal(res.headers['transfer-encoding'], undefined);
    // Preflight goes to sockjs itself.
    const pre = await httpRequest('OPTIONS', `${at(A).url}/sockjs/info`);
    assert.equal(pre.status, 204);
  });

  it('counts websockets served here before the host counts their DDP session, in its health answer (peers route by it) and stats', async () => {
    // A host whose count lags (Meteor counts a session once the client's `connect` is processed): here it never counts.
    cluster = await startCluster(['a'], url, () => ({ attach: { sessionCount: () => 0 } }));
    const sockets: WebSocket[] = [];
    try {
      for (let k = 0; k < 3; k++) {
        const ws = new WebSocket(`${at(A).url.replace('http', 'ws')}/websocket`);
        sockets.push(ws);
        await once(ws, 'open');
      }
      const health = JSON.parse((await httpRequest('GET', `${at(A).url}/cluster/health`)).body) as { sessions: number };
      assert.equal(health.sessions, 3, 'websockets open here, no DDP connect yet');
      assert.equal(at(A).cluster.stats().sessions, 3);
    } finally {
      for (const ws of sockets) ws.close();
    }
    await eventually(() => at(A).cluster.stats().sessions === 0, 'closed websockets are no longer counted');
  });

  it('answers the health route with its live figures for peers\' checks, sized (not chunked)', async () => {
    cluster = await startCluster(['a', 'b'], url);
    const res = await httpRequest('GET', `${at(A).url}/cluster/health`);
    assert.equal(res.status, 200);
    const body = JSON.parse(res.body) as Record<string, unknown>;
    assert.equal(body.id, 'a');
    assert.equal(body.status, 'serving');
    assert.equal(typeof body.sessions, 'number');
    assert.equal(typeof body.opened, 'number');
    assert.equal(res.headers['content-length'], String(Buffer.byteLength(res.body)));
    assert.equal(res.headers['transfer-encoding'], undefined);
  });

  it('honours ROOT_URL_PATH_PREFIX for info, pinned paths and raw websockets', async () => {
    cluster = await startCluster(['a', 'b'], url, () => ({ app: { rootUrlPathPrefix: '/app' } }));
    assert.match(at(A).url, /\/app$/);
    const seen = await pool(Array.from({ length: 12 }), 4, async (_, n) => {
      const c = track(n % 2 ? await sockjsDdp(at(A).url, { transports: ['xhr-polling'] }) : await wsDdp(at(A).url));
      if (n % 2) assert.match(String((c as { info?: { base_url?: string } }).info?.base_url), /\/app\/cluster-ddp\//);
      return (await whoami(c)).instanceId;
    });
    assert.deepEqual([...new Set(seen)].sort(), ['a', 'b']);
  });

  it('close() deregisters and gives the server its own listeners back', async () => {
    cluster = await startCluster(['a', 'b'], url);
    const a = at(A);
    await a.cluster.close();
    await waitView(at(B).cluster, 'a gone', (v) => !v.byId.has('a'), 5000);
    const info = JSON.parse((await httpRequest('GET', `${a.url}/sockjs/info`)).body) as Record<string, unknown>;
    assert.equal(info.base_url, undefined, 'plain sockjs answers again');
    assert.equal((await whoami(track(await wsDdp(a.url)))).instanceId, 'a');
  });

  it('refuses websocket and SockJS handshakes from origins outside CLUSTER_ALLOWED_ORIGINS', async () => {
    cluster = await startCluster(['a', 'b'], url, () => ({ attach: { allowedOrigins: ['https://app.example.com'] } }));
    const evil = { headers: { origin: 'https://evil.example.net' } };
    await assert.rejects(wsDdp(at(A).url, evil), /HTTP 403/);
    assert.equal((await httpRequest('GET', `${at(A).url}/sockjs/info`, undefined, evil)).status, 403);
    assert.equal((await httpRequest('POST', `${at(A).url}/sockjs/1/abc/xhr`, '', evil)).status, 403);
    const good = track(await wsDdp(at(A).url, { headers: { origin: 'https://app.example.com' } }));
    assert.ok((await whoami(good)).instanceId);
    const nodeClient = track(await wsDdp(at(A).url));
    assert.ok((await whoami(nodeClient)).instanceId, 'no Origin (Node/mobile DDP clients) passes');
    assert.equal((await httpRequest('GET', `${at(A).url}/some/page`, undefined, evil)).status, 200, 'pages are not guarded');
    assert.equal(at(A).cluster.stats().forbiddenOrigins, 3);
  });

  describe('client address and hop authentication', () => {
    const CLIENT = '127.0.0.2';
    const XFF = '203.0.113.7, 198.51.100.20';
    let saved: string | undefined;
    before(() => {
      saved = process.env.HTTP_FORWARDED_COUNT;
    });
    after(() => {
      if (saved === undefined) delete process.env.HTTP_FORWARDED_COUNT;
      else process.env.HTTP_FORWARDED_COUNT = saved;
    });

    for (const count of ['0', '1']) {
      it(`gives Meteor the same clientAddress served here and proxied (HTTP_FORWARDED_COUNT=${count})`, async () => {
        process.env.HTTP_FORWARDED_COUNT = count; // the fixture reads it at each DDP connect, like Meteor
        cluster = await startCluster(['a', 'b'], url);
        const [hashA, hashB] = cluster.map((i) => i.cluster.view().self!.endpointHash);
        const expected = count === '0' ? CLIENT : '198.51.100.20';
        const opts = { localAddress: CLIENT, headers: { 'x-forwarded-for': XFF } };
        // Raw websocket, served by A itself and proxied by A to B.
        const here = track(await wsDdp(`${at(A).url}/cluster-ddp/${hashA}/web`, opts));
        const there = track(await wsDdp(`${at(A).url}/cluster-ddp/${hashB}/web`, opts));
        const [h, t] = [await whoami(here), await whoami(there)];
        assert.deepEqual([h.instanceId, t.instanceId], ['a', 'b']);
        assert.equal(h.clientAddress, expected);
        assert.equal(t.clientAddress, expected);
        assert.equal(t.httpHeaders['x-forwarded-for'], XFF);
        // xhr-polling: every poll carries the view again (sockjs refreshes it per poll).
        for (const hash of [hashA, hashB]) {
          const session = await rawXhrDdp(() => `${at(A).url}/cluster-ddp/${hash}/web`, opts);
          const who = (await session.call('whoami')) as WhoamiResult;
          assert.equal(who.clientAddress, expected, `xhr via ${hash}`);
        }
        assert.ok(at(B).cluster.stats().hopsIn >= 2, 'B received hops');
      });
    }

    it('trusts only a hop header signed with the cluster secret, once, for the request it names', async () => {
      process.env.HTTP_FORWARDED_COUNT = '0';
      cluster = await startCluster(['a', 'b'], url);
      const hashB = at(B).cluster.view().self!.endpointHash;
      const path = `/cluster-ddp/${hashB}/web/websocket`;
      const claimed = { remoteAddress: '198.51.100.9', forwardedFor: null };
      const valid = makeHop(keysFrom(TEST_SECRET, null), 'GET', path, claimed, 'a', 'b', Date.now());
      const connect = async (hop: string): Promise<string | null> => {
        const c = track(await wsDdp(`${at(B).url}/cluster-ddp/${hashB}/web`, { localAddress: CLIENT, headers: { [HOP_HEADER]: hop } }));
        return (await whoami(c)).clientAddress;
      };
      assert.equal(await connect(valid), '198.51.100.9', 'a valid hop restores the entry view (the test can tell)');
      assert.equal(await connect(valid), CLIENT, 'replayed');
      const forged = `${valid.slice(0, valid.indexOf('.'))}.${'A'.repeat(43)}`;
      assert.equal(await connect(forged), CLIENT, 'bad signature');
      const otherSecret = makeHop(keysFrom('some-other-secret-0123456789', null), 'GET', path, claimed, 'a', 'b', Date.now());
      assert.equal(await connect(otherSecret), CLIENT, 'signed with another secret');
      const expired = makeHop(keysFrom(TEST_SECRET, null), 'GET', path, claimed, 'a', 'b', Date.now() - 120_000);
      assert.equal(await connect(expired), CLIENT, 'expired');
      const elsewhere = makeHop(keysFrom(TEST_SECRET, null), 'GET', '/sockjs/info', claimed, 'a', 'b', Date.now());
      assert.equal(await connect(elsewhere), CLIENT, 'signed for another URL');
      assert.equal(await connect('garbage'), CLIENT, 'malformed');
      assert.equal(at(B).cluster.stats().untrustedHops, 6);
      assert.ok(at(B).logs.some((l) => l.includes('balancer.untrusted_hop') && l.includes('bad signature')));
    });

    it('refuses a hop header made before its target restarted with the same instance id (the replay guard is in memory)', async () => {
      process.env.HTTP_FORWARDED_COUNT = '0';
      cluster = await startCluster(['a', 'b'], url);
      const hashB = at(B).cluster.view().self!.endpointHash;
      const path = `/cluster-ddp/${hashB}/web/websocket`;
      const claimed = { remoteAddress: '198.51.100.9', forwardedFor: null };
      const captured = makeHop(keysFrom(TEST_SECRET, null), 'GET', path, claimed, 'a', 'b', Date.now());
      const connect = async (target: Instance): Promise<string | null> => {
        const c = track(await wsDdp(`${target.url}/cluster-ddp/${hashB}/web`, { localAddress: CLIENT, headers: { [HOP_HEADER]: captured } }));
        return (await whoami(c)).clientAddress;
      };
      assert.equal(await connect(at(B)), '198.51.100.9', 'trusted once');
      // b restarts on the same port (same endpoint, same pinned path) with the same instance id.
      const port = Number(new URL(at(B).url).port);
      await at(B).close();
      cluster[B] = await startInstance({ id: 'b', discoveryUrl: url, port });
      assert.equal(await connect(at(B)), CLIENT, 'the captured header is refused by the new process');
      assert.ok(at(B).logs.some((l) => l.includes('balancer.untrusted_hop') && l.includes('made before this instance started')));
    });
  });

  describe('failures', () => {
    it('never routes new sessions to a peer killed with -9, and retries them elsewhere without client errors', async () => {
      const ab = await startCluster(['a', 'b'], url);
      cluster = ab;
      const child: ChildInstance = await spawnInstance('c', { CLUSTER_DISCOVERY_URL: url, CLUSTER_STALE_HORIZON: '4000' });
      children.push(child);
      await Promise.all(ab.map((i) => waitView(i.cluster, 'c serving', (v) => v.byId.get('c')?.state === 'serving' && v.byId.get('c')!.healthy)));
      // c is alive and takes sessions.
      const before = await pool(Array.from({ length: 30 }), 10, async () => (await whoami(track(await wsDdp(at(A).url)))).instanceId);
      assert.ok(before.includes('c'), 'c served before it died');
      const hashC = at(A).cluster.view().byId.get('c')!.endpointHash;
      await child.kill('SIGKILL');
      // Right away, while every view still lists c as healthy: first a session pinned to c through A
      // (A tries c whatever the load figures say, and must retry it elsewhere) ...
      const pinned = (await whoami(track(await wsDdp(`${at(A).url}/cluster-ddp/${hashC}/web`)))).instanceId;
      assert.notEqual(pinned, 'c');
      // ... then a mix of transports entering A and B.
      const after = await pool(Array.from({ length: 60 }), 12, async (_, n) => {
        const entry = at(n % 2 === 0 ? A : B).url;
        const c = track(n % 3 === 0 ? await wsDdp(entry)
          : await sockjsDdp(entry, { transports: n % 3 === 1 ? ['xhr-polling'] : ['websocket'] }));
        return (await whoami(c)).instanceId;
      });
      assert.ok(!after.includes('c'), `nothing on the dead peer: ${JSON.stringify(spread(after).counts)}`);
      const retries = ab.reduce((sum, i) => sum + i.cluster.stats().retries, 0);
      figures.killRetries = retries;
      assert.ok(retries >= 1, 'the dead peer was tried and the session retried elsewhere');
      await Promise.all(ab.map((i) => waitView(i.cluster, 'c unhealthy', (v) => v.byId.get('c')?.healthy !== true, 20_000)));
    });

    it('answers malformed and hostile requests with 4xx and stays up', async () => {
      cluster = await startCluster(['a', 'b'], url);
      const base = at(A).url;
      const cases: [string, string, number[]][] = [
        ['GET', `/sockjs/${'x'.repeat(9000)}`, [414]],
        ['GET', '/sockjs/1/../../etc/passwd/xhr', [404]],
        ['POST', '/sockjs/1/s.s/xhr', [404]],
        ['POST', '/sockjs/1/s/nope', [404]],
        ['POST', '/sockjs/1/s/xhr/extra', [404]],
        ['GET', '/cluster-ddp/zzzz/web/1/s/xhr', [404]],
        ['GET', '/cluster-ddp/0123456789abcdef0000/bad!svc/1/s/xhr', [400]],
        ['POST', '/cluster-ddp/0123456789abcdef0000/web/1/s/xhr_send', [404]],
        ['GET', '/secret/sockjs/info', [404]],
        ['GET', '/sockjs/1/%0d%0aSet-Cookie:x=1/xhr', [404, 405]],
      ];
      for (const [method, path, statuses] of cases) {
        // Raw bytes: an HTTP client library would normalise '..' and refuse some of these paths.
        const body = path.endsWith('xhr_send') ? '["x"]' : '';
        const res = await rawRequest(base, `${method} ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
        const status = Number(/^HTTP\/1\.1 (\d+)/.exec(res)?.[1]);
        assert.ok(statuses.includes(status), `${method} ${path.slice(0, 60)} -> ${status}`);
        assert.ok(!/\r\nset-cookie:/i.test(res.slice(0, res.indexOf('\r\n\r\n'))));
      }
      // Bad upgrades: a websocket to an unknown pinned endpoint, and garbage headers.
      const raw = await rawRequest(base, 'GET /cluster-ddp/0123456789abcdef0000/bad!svc/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
      assert.match(raw, /^HTTP\/1\.1 400/);
      const bad = await rawRequest(base, 'GET /sockjs/info HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n');
      assert.match(bad, /^HTTP\/1\.1 400/);
      // Still up and serving.
      assert.equal(((await whoami(track(await wsDdp(base)))).instanceId.length > 0), true);
    });
  });
});
