/**
 * Fuzz: 10,000 generated malformed or hostile requests against a balancer, over raw sockets.
 * A sentinel server outside the registry counts anything that reaches it: forged registry entries,
 * pinned hashes, hop headers, Host headers and absolute-form URLs all try to point there.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { MongoClient } from 'mongodb';
import { HOP_HEADER, makeHop } from '../lib/balancer/hop';
import { endpointHash, keysFrom } from '../lib/sign';
import { TEST_SECRET, spawnInstance, startCluster, waitView, type ChildInstance, type Instance } from './support/cluster';
import { wsDdp } from '../examples/node-ddp-app/clients';
import { mongo, uniqueDbUrl } from './support/mongo';
import { eventually } from './support/wait';
import { prng } from './support/prng';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;


interface Reply {
  readonly status: number;
  readonly head: string;
  readonly body: string;
}

/** Sends raw bytes on a fresh connection; resolves with what came back (status 0: closed/timeout). */
function send(port: number, bytes: string, localAddress?: string): Promise<Reply> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress }, () => socket.write(bytes, 'latin1'));
    let out = '';
    const finish = (): void => {
      socket.destroy();
      const end = out.indexOf('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(out)?.[1] ?? 0), head: out.slice(0, end), body: out.slice(end + 4, end + 4 + 2000) });
    };
    socket.setTimeout(1000, finish);
    socket.on('data', (d: Buffer) => {
      out += d.toString('latin1');
      // A websocket that got upgraded (a valid handshake slipped through): we have what we need.
      if (out.startsWith('HTTP/1.1 101')) finish();
    });
    socket.on('close', finish);
    socket.on('error', finish);
  });
}

describe('fuzz: hostile requests against a balancer', function () {
  this.timeout(300_000);
  let cluster: Instance[] = [];
  let sentinel: http.Server;
  let sentinelHits = 0;

  let child: ChildInstance | null = null;

  afterEach(async () => {
    await child?.kill();
    child = null;
    await Promise.all(cluster.map((i) => i.close()));
    sentinel.closeAllConnections();
    sentinel.close();
  });

  it('10,000 hostile requests, then 20,000 junk service names and 20,000 junk session ids: stays up, proxies nothing outside the registry, leaks nothing, returns to its memory and metrics baseline', async () => {
    sentinel = http.createServer((_req, res) => {
      sentinelHits++;
      res.end('sentinel');
    });
    sentinel.on('upgrade', (_req, socket: net.Socket) => {
      sentinelHits++;
      socket.destroy();
    });
    sentinel.listen(0, '127.0.0.1');
    await once(sentinel, 'listening');
    const sentinelPort = (sentinel.address() as AddressInfo).port;
    const sentinelUrl = `http://127.0.0.1:${sentinelPort}`;
    const sentinelHash = endpointHash(sentinelUrl);

    const url = uniqueDbUrl(mongo().url, 'fuzz');
    cluster = await startCluster(['a', 'b'], url, () => ({ attach: { dashboardPassword: 'fuzz-dashboard-password' } }));
    const [a, b] = cluster as [Instance, Instance];
    // A third member in a process of its own, whose memory (RSS) is its own: it reports it on SIGUSR2.
    child = await spawnInstance('c', {
      CLUSTER_DISCOVERY_URL: url, CLUSTER_DASHBOARD_PASSWORD: 'fuzz-dashboard-password', TEST_MEMORY_REPORT: '1',
    });
    const c = child;
    const cPort = Number(new URL(c.url).port);
    await Promise.all(cluster.map((i) => waitView(i.cluster, `${i.id} sees c`, (v) => v.byId.get('c')?.state === 'serving' && v.byId.get('c')!.healthy)));
    const childMemory = async (): Promise<{ rss: number; heap: number }> => {
      const asked = Date.now();
      c.proc.kill('SIGUSR2');
      const line = await eventually(() => c.logs.find((l) => l.at >= asked && l.line.startsWith('memory '))?.line, 'c reports its memory');
      return JSON.parse(line.slice('memory '.length)) as { rss: number; heap: number };
    };
    const port = a.app.port;
    const ports = [port, b.app.port, cPort];
    const hashes = [...cluster.map((i) => i.cluster.view().self!.endpointHash), a.cluster.view().byId.get('c')!.endpointHash];

    // Someone with write access to the collection adds the sentinel: unsigned, and badly signed.
    const client = await MongoClient.connect(url);
    const base = { service: 'web', balancer: null, state: 'serving', startedAt: new Date(), heartbeatAt: new Date(), seq: 1, servingMs: 1e6,
      load: { sessions: 0, capacity: 1e6, elu: 0, delayMs: 0, cpu: 0, rss: 0 } };
    await client.db().collection('clusterEndpoints').insertMany([
      { _id: 'evil1' as never, ...base, endpoint: sentinelUrl },
      { _id: 'evil2' as never, ...base, endpoint: sentinelUrl, sig: 'forged' },
    ]);
    await client.close();

    const rnd = prng(20261123);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
    const junk = (n: number): string => Array.from({ length: n }, () => String.fromCharCode(33 + Math.floor(rnd() * 94))).join('');
    const keys = keysFrom(TEST_SECRET, null);
    const capturedHop = makeHop(keys, 'GET', '/websocket', { remoteAddress: '6.6.6.6', forwardedFor: null }, 'a', 'b', Date.now());
    const transports = ['websocket', 'xhr', 'xhr_send', 'xhr_streaming', 'eventsource', 'htmlfile', 'jsonp', 'jsonp_send', 'nope', '', '..'];
    const paths = (): string => {
      switch (Math.floor(rnd() * 14)) {
        case 0: return `/sockjs/${junk(3)}/${junk(8)}/${pick(transports)}`;
        case 1: return pick(['/sockjs/info', '/sockjs', '/sockjs/', '/sockjs/iframe.html', '/sockjs/iframe-x.html', '/websocket', '/websocket/']);
        case 2: return `/cluster-ddp/${pick([...hashes, sentinelHash, junk(20), 'zz', '0'.repeat(64), ''])}/${pick(['web', 'chat', 'bad!', '', junk(70)])}/${junk(3)}/${junk(8)}/${pick(transports)}`;
        case 3: return `/cluster-ddp/${pick([sentinelHash, ...hashes])}/web/websocket`;
        case 4: return `/${pick(['web', 'chat', 'evil', junk(5)])}/sockjs/${pick(['info', `1/${junk(6)}/xhr`, 'websocket'])}`;
        case 5: return pick(['/sockjs/../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd', '//sockjs//info', '/sockjs/1/../2/xhr', '/sockjs/1/a.b/xhr']);
        case 6: return `/sockjs/1/${pick(['%0d%0aSet-Cookie:x=1', '%00', 'a%0a', '\u00ff\u00fe'])}/xhr`;
        case 7: return `/sockjs/${'x'.repeat(8000 + Math.floor(rnd() * 4000))}`;
        case 8: return pick(['/cluster', '/cluster/', '/cluster/api/cluster', '/cluster/metrics', '/cluster/login', '/cluster/health', '/cluster/../cluster/api/cluster']);
        case 9: return `${sentinelUrl}/sockjs/info`; // absolute-form request target
        case 10: return `/${junk(1 + Math.floor(rnd() * 40))}`;
        case 11: return '*';
        case 12: return `/sockjs/${junk(2)}/${junk(4)}/xhr?${junk(20)}`;
        default: return `/cluster-ddp/${sentinelHash}/web/1/${junk(8)}/xhr`;
      }
    };
    const hopValues = (): string => pick([
      'garbage', `${junk(40)}.${junk(43)}`, capturedHop,
      makeHop(keys, 'GET', '/elsewhere', { remoteAddress: '6.6.6.6', forwardedFor: null }, 'a', 'b', Date.now()),
      makeHop(keys, 'GET', '/websocket', { remoteAddress: '6.6.6.6', forwardedFor: null }, 'a', 'b', Date.now() - 3_600_000),
      makeHop(keysFrom('not-the-cluster-secret-xyz', null), 'GET', '/sockjs/info', { remoteAddress: '6.6.6.6', forwardedFor: null }, 'a', 'b', Date.now()),
    ]);
    // A service name nobody serves, and a polling request of a session nobody has.
    const junkService = (i: number): string => `GET /svc${i}x${junk(4).replace(/[^A-Za-z0-9]/g, 'q')}/sockjs/info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`;
    const junkSession = (i: number): string => {
      const id = `j${i}${junk(12).replace(/[^A-Za-z0-9]/g, 'z')}`;
      return pick([
        `POST /sockjs/${i % 1000}/${id}/xhr_send HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\n["x"]`,
        `GET /sockjs/${i % 1000}/${id}/xhr HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`,
        `POST /cluster-ddp/${pick(hashes)}/web/sockjs/${i % 1000}/${id}/xhr_send HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\n["x"]`,
      ]);
    };
    const request = (): string => {
      const method = pick(['GET', 'GET', 'POST', 'OPTIONS', 'PUT', 'DELETE', junk(4)]);
      const lines = [`${method} ${paths()} HTTP/1.1`];
      lines.push(`Host: ${pick(['localhost', `127.0.0.1:${sentinelPort}`, junk(10), 'evil.example'])}`);
      if (rnd() < 0.3) lines.push(`X-Forwarded-Host: 127.0.0.1:${sentinelPort}`);
      if (rnd() < 0.4) lines.push(`${HOP_HEADER}: ${hopValues()}`);
      if (rnd() < 0.2) lines.push(`Cookie: ddp-cluster-ui=${pick([sentinelHash, junk(12), ...hashes])}; ddp_cluster_dashboard=v1.${Date.now() + 1e6}.${junk(12)}.${junk(43)}`);
      if (rnd() < 0.2) lines.push(`Authorization: Basic ${Buffer.from(`admin:${junk(12)}`).toString('base64')}`);
      if (rnd() < 0.3) lines.push('Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Version: 13', `Sec-WebSocket-Key: ${pick(['dGhlIHNhbXBsZSBub25jZQ==', junk(10), ''])}`);
      if (rnd() < 0.1) lines.push(`Origin: ${pick(['https://evil.example', 'null', junk(8)])}`);
      if (rnd() < 0.02) lines.push(`X-Big: ${'b'.repeat(20_000)}`); // past Node's header limit: 431
      if (rnd() < 0.05) lines.push(`X-Bad: a${pick(['\x00', '\x7f', '\r'])}b`);
      const body = method === 'POST' && rnd() < 0.7 ? pick(['["x"]', '[]', junk(30), '']) : '';
      lines.push(`Content-Length: ${body.length}`, 'Connection: close');
      return lines.join('\r\n') + '\r\n\r\n' + body;
    };

    const metricsSize = async (p: number): Promise<number> => {
      const r = await send(p, `GET /cluster/metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ${Buffer.from('p:fuzz-dashboard-password').toString('base64')}\r\nConnection: close\r\n\r\n`, '127.0.0.9');
      // (From its own address: the fuzz's wrong passwords got 127.0.0.1 rate-limited.)
      assert.equal(r.status, 200);
      return r.head.length + r.body.length + Number(/content-length: (\d+)/i.exec(r.head)?.[1] ?? 0);
    };
    const memory = (): { heap: number; rss: number } => {
      gc();
      gc();
      return { heap: process.memoryUsage().heapUsed, rss: process.memoryUsage.rss() };
    };

    // Baseline after a warm-up at the same concurrency (every kind of request, on both instances,
    // so lazily made things exist and the heap has grown to its working size), then 10,000
    // requests, 50 at a time.
    let w = 0;
    await Promise.all(Array.from({ length: 50 }, async () => {
      while (w < 3000) {
        const i = w++;
        await send(ports[i % 3] as number, i < 1000 ? request() : i < 2000 ? junkService(i + 1e6) : junkSession(i + 1e6));
      }
    }));
    const metricsBefore = await Promise.all(ports.map(metricsSize));
    const cBefore = await childMemory();
    const before = memory();
    const heapBefore = before.heap;
    const statuses: Record<string, number> = {};
    const leaks: string[] = [];
    let internalErrors = 0;
    let next = 0;
    const TOTAL = 10_000;
    const began = Date.now();
    await Promise.all(Array.from({ length: 50 }, async () => {
      while (next < TOTAL) {
        next++;
        const bytes = request();
        const x = rnd();
        const target = x < 0.6 ? port : x < 0.8 ? b.app.port : cPort;
        const r = await send(target, bytes);
        statuses[r.status] = (statuses[r.status] ?? 0) + 1;
        if (/internal error/.test(r.body)) internalErrors++;
        const firstLine = bytes.slice(0, bytes.indexOf('\r\n'));
        if (/\/cluster(\/|\s|$)/.test(firstLine) && !firstLine.includes('/cluster/health') && /"endpoint"|"members"|ddp_cluster_/.test(r.body)) {
          leaks.push(firstLine.slice(0, 80));
        }
      }
    }));
    const tookMs = Date.now() - began;

    // Then 20,000 distinct junk service names and 20,000 distinct junk session ids.
    const JUNK = 20_000;
    let k = 0;
    await Promise.all(Array.from({ length: 50 }, async () => {
      while (k < 2 * JUNK) {
        const i = k++;
        const target = ports[i % 3] as number;
        const r = await send(target, i < JUNK ? junkService(i) : junkSession(i));
        statuses[r.status] = (statuses[r.status] ?? 0) + 1;
        if (/internal error/.test(r.body)) internalErrors++;
      }
    }));

    assert.equal(sentinelHits, 0, 'nothing reached the sentinel');
    assert.deepEqual(leaks, [], 'no dashboard data without a valid login');
    assert.equal(internalErrors, 0, `no request made the balancer fail: ${cluster.flatMap((i) => i.logs.filter((l) => l.includes('_failed'))).slice(0, 3).join('\n')}`);
    assert.ok(a.cluster.view().members.every((m) => m.endpoint !== sentinelUrl), 'forged entries ignored');
    // Still serving.
    for (const i of [...cluster.map((x) => x.url), c.url]) {
      const c = await wsDdp(i);
      assert.ok(((await c.call('whoami')) as { instanceId: string }).instanceId);
      await c.close();
    }
    // Every proxy attempt is released (connect timeouts included).
    await eventually(() => cluster.every((i) => i.cluster.stats().pendingProxies === 0), 'no pending proxied requests', 20_000);
    const stats = a.cluster.stats();
    assert.ok(stats.untrustedHops > 100, `untrusted hops seen: ${stats.untrustedHops}`);
    const after = memory();
    const growth = after.heap - heapBefore;
    const cAfter = await childMemory();
    const rssGrowth = cAfter.rss - cBefore.rss;
    const metricsAfter = await Promise.all(ports.map(metricsSize));
    const mb = (n: number): number => Math.round(n / 1e5) / 10;
    process.stdout.write(`      figures: ${JSON.stringify({
      requests: TOTAL, junkServices: JUNK, junkSessions: JUNK, tookMs, statuses,
      heapBeforeMB: mb(heapBefore), heapGrowthMB: mb(growth),
      c: { heapBeforeMB: mb(cBefore.heap), heapGrowthMB: mb(cAfter.heap - cBefore.heap), rssBeforeMB: mb(cBefore.rss), rssGrowthMB: mb(rssGrowth) },
      metricsBytesBefore: metricsBefore, metricsBytesAfter: metricsAfter,
      untrustedHops: stats.untrustedHops, sessionTable: cluster.map((i) => i.cluster.stats().sessionTable),
    })}\n`);
    // a and b run in this process: their heap, after GC, returns to within 5 MB of the baseline.
    assert.ok(growth < 5e6, `heap grew by ${mb(growth)} MB`);
    // c has a process of its own: heap within 5 MB, and RSS (which also holds what V8 and the
    // allocator keep for reuse) within 10 % of its baseline.
    assert.ok(cAfter.heap - cBefore.heap < 5e6, `c's heap grew by ${mb(cAfter.heap - cBefore.heap)} MB`);
    assert.ok(rssGrowth < 0.1 * cBefore.rss, `c's RSS grew by ${mb(rssGrowth)} MB from ${mb(cBefore.rss)} MB`);
    // Every counter and label set is bounded: /cluster/metrics within 10 % of its size before.
    for (const [n, size] of metricsAfter.entries()) {
      assert.ok(size <= 1.1 * (metricsBefore[n] as number), `metrics of instance ${n}: ${metricsBefore[n]} → ${size} bytes`);
    }
  });
});
