/**
 * Translated polling (lib/balancer/translate.ts, carried.ts): a balancer that is the entry of a
 * polling session another member serves terminates the client's SockJS itself and carries the
 * session to the member over one websocket. Real instances (the Meteor-shaped fixture with sockjs
 * 0.3.24), real sockjs-client and hand-driven xhr sessions.
 */
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import type { WhoamiResult } from '../examples/node-ddp-app/app';
import { getSockjsInfo, httpRequest, rawXhrDdp, sockjsDdp } from '../examples/node-ddp-app/clients';
import { HOP_HEADER, makeHop } from '../lib/balancer/hop';
import { keysFrom } from '../lib/sign';
import { mongo, uniqueDbUrl } from './support/mongo';
import { TEST_SECRET, spawnInstance, startCluster, waitView, type Instance } from './support/cluster';
import { eventually } from './support/wait';
import { rawRequest } from './support/raw';

describe('translated polling: the entry carries a polling session to its member over one websocket', function () {
  this.timeout(120_000);
  let url: string;
  let cluster: Instance[] = [];
  let clients: { close(): Promise<void> }[] = [];
  const saved = process.env.HTTP_FORWARDED_COUNT;

  beforeEach(function () {
    url = uniqueDbUrl(mongo().url, `tr_${(this.currentTest?.title ?? 'x').replace(/\W+/g, '_').slice(0, 20)}`);
    clients = [];
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
    await Promise.all(cluster.map((i) => i.close()));
    cluster = [];
    if (saved === undefined) delete process.env.HTTP_FORWARDED_COUNT;
    else process.env.HTTP_FORWARDED_COUNT = saved;
  });

  const track = <T extends { close(): Promise<void> }>(c: T): T => {
    clients.push(c);
    return c;
  };
  /** A serves nothing itself (CLUSTER_SELF_WEIGHT=0): every session entering it has its member elsewhere. */
  const forcedHop = (ids: string[], extra: Record<string, string> = {}, app: Record<string, unknown> = {}): Promise<Instance[]> =>
    startCluster(ids, url, (id) => ({
      attach: { env: id === 'a' ? { CLUSTER_SELF_WEIGHT: '0', ...extra } : { ...extra } },
      app: { disconnectDelay: 1500, ...app },
    }));
  const byId = (id: string): Instance => cluster.find((i) => i.id === id) as Instance;

  it('carries sockjs-client xhr-polling sessions entering A to B and C: calls work, no poll or send is relayed', async () => {
    cluster = await forcedHop(['a', 'b', 'c']);
    const a = byId('a');
    const who: WhoamiResult[] = [];
    for (let i = 0; i < 6; i++) {
      const c = track(await sockjsDdp(a.url, { transports: ['xhr-polling'] }));
      assert.match(c.info?.base_url ?? '', /\/cluster-ddp\/[0-9a-f]+\.[0-9a-f]+\/web$/, 'base_url names the member and A, which carries');
      const w = (await c.call('whoami')) as WhoamiResult;
      assert.deepEqual((await c.call('whoami')) as WhoamiResult, w, 'every call reaches the same session');
      who.push(w);
    }
    assert.ok(who.every((w) => w.instanceId === 'b' || w.instanceId === 'c'), JSON.stringify(who.map((w) => w.instanceId)));
    assert.ok(who.every((w) => w.transport === 'xhr-polling'), 'the member sees the client\'s own transport');
    const s = a.cluster.stats();
    assert.equal(s.pollingHop, 'translate');
    assert.equal(s.translatedSessions, 6);
    assert.ok(s.translated >= 6 * 4, `every request of the sessions was translated (${s.translated})`);
    assert.equal(s.proxiedByTransport.xhr ?? 0, 0, 'no poll relayed');
    assert.equal(s.proxiedByTransport.xhr_send ?? 0, 0, 'no send relayed');
    assert.equal(byId('b').cluster.stats().carriedSessions + byId('c').cluster.stats().carriedSessions, 6);
    assert.equal(byId('b').app.sessionCount() + byId('c').app.sessionCount(), 6, 'the members hold the DDP sessions');
    assert.equal(a.app.sessionCount(), 0, 'A holds none');
  });

  for (const count of ['0', '1']) {
    it(`gives the member the client's address and headers, as served here (HTTP_FORWARDED_COUNT=${count})`, async () => {
      process.env.HTTP_FORWARDED_COUNT = count;
      cluster = await forcedHop(['a', 'b']);
      const opts = { localAddress: '127.0.0.2', headers: { 'x-forwarded-for': '203.0.113.7, 198.51.100.20', 'user-agent': 'translate-test/1' } };
      const info = await getSockjsInfo(`${byId('a').url}/sockjs`);
      const base = info.base_url as string;
      assert.match(base, /\.[0-9a-f]+\/web$/);
      const session = await rawXhrDdp(() => base, opts);
      const w = (await session.call('whoami')) as WhoamiResult;
      assert.equal(w.instanceId, 'b');
      assert.equal(w.clientAddress, count === '0' ? '127.0.0.2' : '198.51.100.20');
      assert.equal(w.httpHeaders['x-forwarded-for'], '203.0.113.7, 198.51.100.20');
      assert.equal(w.httpHeaders['user-agent'], 'translate-test/1');
    });
  }

  it('keeps the session when its requests alternate between A, B and C: they all reach A, which carries it', async () => {
    cluster = await forcedHop(['a', 'b', 'c']);
    const bases = cluster.map((i) => i.url);
    const info = await getSockjsInfo(`${byId('a').url}/sockjs`);
    const pinned = new URL(info.base_url as string).pathname;
    const session = await rawXhrDdp((_step, k) => `${bases[k % 3] as string}${pinned}`);
    const first = (await session.call('whoami')) as WhoamiResult;
    for (let i = 0; i < 5; i++) assert.equal(((await session.call('whoami')) as WhoamiResult).sessionId, first.sessionId);
    assert.equal(byId('a').cluster.stats().translatedSessions, 1);
    const relayed = cluster.filter((i) => i.id !== 'a').reduce((n, i) => n + (i.cluster.stats().byReason['proxy:carrying balancer'] ?? 0), 0);
    assert.ok(relayed >= 4, `B and C sent the session's requests to A (${relayed})`);
  });

  it('closes the client\'s session when the member ends it, and the member\'s when the client goes away', async () => {
    cluster = await forcedHop(['a', 'b']);
    const c = await sockjsDdp(byId('a').url, { transports: ['xhr-polling'] });
    assert.equal(((await c.call('whoami')) as WhoamiResult).instanceId, 'b');
    // The member closes the DDP session (as a drain or rebalancing does): the client sees its sockjs session close.
    for (const h of byId('b').app.sessions.values()) h.close();
    const closed = await c.closed;
    assert.ok(closed.code !== undefined, JSON.stringify(closed));
    await eventually(() => byId('a').cluster.stats().translatedSessions === 0, 'A forgets the session', 10_000);
    // A client that stops polling: after sockjs's disconnect delay A ends the session, and the member's with it.
    const gone = await rawXhrDdp(() => getBase());
    assert.equal(((await gone.call('whoami')) as WhoamiResult).instanceId, 'b');
    assert.equal(byId('b').app.sessionCount(), 1);
    await eventually(() => byId('b').app.sessionCount() === 0 && byId('b').cluster.stats().carriedSessions === 0, 'B\'s session ends', 15_000);
    assert.equal(byId('a').cluster.stats().translatedSessions, 0);

    function getBase(): string {
      return `${byId('a').url}${new URL(c.info?.base_url as string).pathname}`;
    }
  });

  it('kill -9 of the member: the entry closes the carried sessions at once and the clients reconnect through it to a survivor', async () => {
    cluster = await forcedHop(['a', 'b']);
    const a = byId('a');
    const child = await spawnInstance('c', { CLUSTER_DISCOVERY_URL: url, CLUSTER_STALE_HORIZON: '4000' });
    try {
      await waitView(a.cluster, 'c serving', (v) => v.byId.get('c')?.state === 'serving' && v.byId.get('c')?.healthy === true);
      // Sessions entering A until some are carried to c.
      const onC: Array<Awaited<ReturnType<typeof sockjsDdp>>> = [];
      for (let i = 0; i < 20 && onC.length < 3; i++) {
        const c = track(await sockjsDdp(a.url, { transports: ['xhr-polling'] }));
        if (((await c.call('whoami')) as WhoamiResult).instanceId === 'c') onC.push(c);
      }
      assert.ok(onC.length > 0, 'some sessions were carried to c');
      await child.kill('SIGKILL');
      // Each client's sockjs session ends (a close frame from A), not a hang until a timeout.
      const closed = await Promise.all(onC.map((c) => c.closed));
      assert.ok(closed.every((x) => x.code !== undefined), JSON.stringify(closed));
      await eventually(() => a.cluster.stats().translatedSessions === a.cluster.stats().carriedSessions + byId('b').cluster.stats().carriedSessions || undefined,
        'A carries only sessions that live on b', 10_000);
      // A new session through A lands on the survivor.
      const again = track(await sockjsDdp(a.url, { transports: ['xhr-polling'] }));
      assert.equal(((await again.call('whoami')) as WhoamiResult).instanceId, 'b');
    } finally {
      await child.kill('SIGKILL');
    }
  });

  it('refuses a carry upgrade without a valid hop header (403) and a plain request to the carry path (404)', async () => {
    cluster = await forcedHop(['a', 'b']);
    const b = byId('b');
    const open = (headers: Record<string, string>): Promise<number> => new Promise((resolve) => {
      const ws = new WebSocket(`${b.url.replace('http', 'ws')}/cluster-ddp/carry?t=xhr-polling`, { headers });
      ws.on('open', () => {
        ws.close();
        resolve(101);
      });
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.on('error', () => resolve(-1));
    });
    assert.equal(await open({}), 403, 'no hop header');
    const path = '/cluster-ddp/carry?t=xhr-polling';
    const client = { remoteAddress: '198.51.100.9', forwardedFor: null };
    const forOther = makeHop(keysFrom(TEST_SECRET, null), 'GET', path, client, 'a', 'c', Date.now());
    assert.equal(await open({ [HOP_HEADER]: forOther }), 403, 'signed for another instance');
    const otherSecret = makeHop(keysFrom('another-secret-0123456789abcdef', null), 'GET', path, client, 'a', 'b', Date.now());
    assert.equal(await open({ [HOP_HEADER]: otherSecret }), 403, 'signed with another secret');
    const valid = makeHop(keysFrom(TEST_SECRET, null), 'GET', path, client, 'a', 'b', Date.now());
    assert.equal(await open({ [HOP_HEADER]: valid }), 101, 'a valid hop opens');
    assert.equal(await open({ [HOP_HEADER]: valid }), 403, 'and only once');
    assert.equal((await httpRequest('GET', `${b.url}/cluster-ddp/carry`)).status, 404);
    assert.equal((await httpRequest('POST', `${b.url}/cluster-ddp/carry`, 'x')).status, 404);
  });

  it('answers hostile carried paths and carry upgrades with 4xx and stays up', async () => {
    cluster = await forcedHop(['a', 'b']);
    const [a, b] = [byId('a'), byId('b')];
    const hashB = b.cluster.view().self!.endpointHash;
    const hashA = a.cluster.view().self!.endpointHash;
    const cases: [string, number][] = [
      [`/cluster-ddp/${hashB}.zz/web/1/s/xhr`, 404],
      [`/cluster-ddp/${hashB}.${hashA}.${hashA}/web/1/s/xhr`, 404],
      [`/cluster-ddp/${hashB}.0123456789abcdef0000/web/1/s/xhr`, 404],
      [`/cluster-ddp/${hashB}.${hashA}/bad!svc/1/s/xhr`, 400],
      [`/cluster-ddp/${hashB}.${hashA}/web/1/s.s/xhr`, 404],
      [`/cluster-ddp/${hashB}.${hashA}/web/1/unknown-session/xhr_send`, 404],
    ];
    for (const [path, status] of cases) {
      const res = await httpRequest('POST', `${a.url}${path}`, '["x"]');
      assert.equal(res.status, status, path);
    }
    // A carry upgrade with a valid hop header but a broken websocket handshake: refused, nothing opened.
    const path = '/cluster-ddp/carry?t=xhr-polling';
    const hop = makeHop(keysFrom(TEST_SECRET, null), 'GET', path, { remoteAddress: '198.51.100.9', forwardedFor: null }, 'a', 'b', Date.now());
    const answer = await rawRequest(b.url,
      `GET ${path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!\r\n${HOP_HEADER}: ${hop}\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 400/);
    assert.equal(b.cluster.stats().carriedSessions, 0);
    // Both still serve, a carried session included.
    const c = track(await sockjsDdp(a.url, { transports: ['xhr-polling'] }));
    assert.equal(((await c.call('whoami')) as WhoamiResult).instanceId, 'b');
  });

  it('answers 404 for a carried session whose carrying balancer is gone, so its client reconnects', async () => {
    cluster = await forcedHop(['a', 'b', 'c']);
    const a = byId('a');
    const info = await getSockjsInfo(`${a.url}/sockjs`);
    const pinned = new URL(info.base_url as string).pathname;
    const session = await rawXhrDdp(() => `${a.url}${pinned}`);
    await session.call('whoami');
    await a.close();
    cluster = cluster.filter((i) => i !== a);
    const c = byId('c');
    await eventually(() => !c.cluster.view().members.some((m) => m.id === 'a' && m.healthy), 'C sees A down', 20_000);
    const res = await httpRequest('POST', `${c.url}${pinned}/000/${session.poll.sessionId}/xhr`);
    assert.equal(res.status, 404);
  });

  it('drains the sessions it carries: each client gets a close frame and reconnects elsewhere', async () => {
    cluster = await forcedHop(['a', 'b']);
    const c = await sockjsDdp(byId('a').url, { transports: ['xhr-polling'] });
    await c.call('whoami');
    const report = await byId('a').cluster.drain({ windowMs: 0 });
    assert.ok(report !== undefined);
    const closed = await c.closed;
    assert.ok(closed.code !== undefined, JSON.stringify(closed));
    await eventually(() => byId('b').app.sessionCount() === 0, 'the member\'s session ends with it', 10_000);
  });

  it('relays to a member that takes no carried sessions (an older version, or no sockjs server given): the session works', async () => {
    cluster = await startCluster(['a', 'b'], url, (id) => ({
      attach: id === 'a' ? { env: { CLUSTER_SELF_WEIGHT: '0' } } : { env: {}, sockjsServer: undefined },
    }));
    const a = byId('a');
    const c = track(await sockjsDdp(a.url, { transports: ['xhr-polling'] }));
    assert.match(c.info?.base_url ?? '', /\.[0-9a-f]+\/web$/, 'A still offers to carry');
    const w = (await c.call('whoami')) as WhoamiResult;
    assert.equal(w.instanceId, 'b');
    assert.equal(((await c.call('whoami')) as WhoamiResult).sessionId, w.sessionId);
    const s = a.cluster.stats();
    assert.equal(s.translatedSessions, 0);
    assert.ok((s.proxiedByTransport.xhr_send ?? 0) >= 2, 'sends relayed');
    assert.equal(s.proxyErrors, 0, 'a refused carry is no proxy error');
    assert.equal(byId('b').cluster.stats().pollingHop, 'relay');
  });

  it('relays as before with CLUSTER_POLLING_HOP=relay: base_url names the member only', async () => {
    cluster = await forcedHop(['a', 'b'], { CLUSTER_POLLING_HOP: 'relay' });
    const a = byId('a');
    const c = track(await sockjsDdp(a.url, { transports: ['xhr-polling'] }));
    assert.match(c.info?.base_url ?? '', /\/cluster-ddp\/[0-9a-f]+\/web$/);
    assert.equal(((await c.call('whoami')) as WhoamiResult).instanceId, 'b');
    const s = a.cluster.stats();
    assert.equal(s.pollingHop, 'relay');
    assert.equal(s.translated, 0);
    assert.ok((s.proxiedByTransport.xhr_send ?? 0) > 0);
  });
});
