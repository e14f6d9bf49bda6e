/**
 * CLUSTER_WORKERS_COUNT (issue 14) with real processes: one primary on one port with 2 workers,
 * each a member of its own. New connections are handed to the workers (the socket itself, over
 * IPC); sessions stay sticky; a worker killed with -9 comes back; SIGTERM drains everything.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fork } from 'node:child_process';
import { parseConfig } from '../lib/config';
import { dashboardPasswordFrom } from '../lib/dashboard/auth';
import { Registry } from '../lib/discovery/registry';
import type { MembershipView } from '../lib/discovery/view';
import { EMPTY_LOAD } from '../lib/load';
import { createLogger } from '../lib/log';
import { endpointHash } from '../lib/sign';
import { parseHead } from '../lib/workers/handoff';
import { MSG_CONNECTION } from '../lib/workers/primary';
import { roleOf, workerConfig, workerEndpoint, workerInstanceId } from '../lib/workers/role';
import { TEST_SECRET, freePort, spawnInstance, type ChildInstance } from './support/cluster';
import { rawXhrDdp, sockjsDdp, toSockjsUrl, wsDdp, type DdpClient } from '../examples/node-ddp-app/clients';
import { mongo, uniqueDbUrl } from './support/mongo';
import { eventually, waitForEvent } from './support/wait';

interface Whoami { instanceId: string; clientAddress: string | null }
interface WorkerInfo { index: number; instanceId: string; port: number; pid: number | null; up: boolean; restarts: number }
interface Stats {
  hopsIn: number;
  healthyMembers: number;
  workers: { role: string; workers?: WorkerInfo[]; handoff?: { handedOff: number; kept: number; unparsed: number }; received?: number };
}

const IDS = ['m', 'm-w1', 'm-w2'];
const AUTH = { authorization: `Basic ${Buffer.from(`prometheus:${dashboardPasswordFrom(TEST_SECRET)}`).toString('base64')}` };

function getJson(url: string): Promise<{ stats: Stats }> {
  return new Promise((resolve, reject) => {
    http.get(url, { headers: AUTH, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`${url}: HTTP ${res.statusCode}`));
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as { stats: Stats });
      });
    }).on('error', reject);
  });
}

describe('workers: pieces', () => {
  it('parses CLUSTER_WORKERS_COUNT and CLUSTER_WORKER_ID, naming the variable and the fix', () => {
    assert.equal(parseConfig({}, {}).workersCount, 0);
    const D = { CLUSTER_DISCOVERY_URL: 'mongodb://127.0.0.1:27017/x' };
    assert.equal(parseConfig({}, { ...D, CLUSTER_WORKERS_COUNT: '3' }).workersCount, 3);
    assert.ok(parseConfig({}, { ...D, CLUSTER_WORKERS_COUNT: 'auto' }).workersCount >= 1);
    assert.throws(() => parseConfig({}, { CLUSTER_WORKERS_COUNT: '2' }), /CLUSTER_WORKERS_COUNT=2 is invalid: set CLUSTER_DISCOVERY_URL too/);
    assert.throws(() => parseConfig({}, { CLUSTER_WORKERS_COUNT: 'many' }), /CLUSTER_WORKERS_COUNT="many" is invalid: use auto/);
    assert.throws(() => parseConfig({}, { CLUSTER_WORKERS_COUNT: '-1' }), /CLUSTER_WORKERS_COUNT/);
    const c = parseConfig({ instanceId: 'web-1', endpointUrl: 'http://10.0.0.5:3000', selfWeight: 0 }, { ...D, CLUSTER_WORKERS_COUNT: '2' });
    assert.deepEqual(roleOf(c, {}), { kind: 'primary', count: 2 });
    assert.deepEqual(roleOf(c, { CLUSTER_WORKER_ID: '2' }), { kind: 'worker', index: 2 });
    assert.throws(() => roleOf(c, { CLUSTER_WORKER_ID: 'x' }), /CLUSTER_WORKER_ID="x" is invalid: leave it unset/);
    assert.deepEqual(roleOf(parseConfig({}, {}), {}), { kind: 'single' });
    // A worker's own id, endpoint (the primary's host, its port) and full weight, whatever the app passed.
    const w = workerConfig(c, { CLUSTER_WORKER_ID: '2', PORT: '3002', CLUSTER_INSTANCE_ID: 'web-1-w2' });
    assert.equal(w.instanceId, 'web-1-w2');
    assert.equal(w.endpointUrl, 'http://10.0.0.5:3002');
    assert.equal(w.selfWeight, 1);
    assert.equal(w.workersCount, 0);
    assert.equal(workerEndpoint(null, 4001), 'http://127.0.0.1:4001');
    assert.equal(workerInstanceId('x'.repeat(64), 12).length, 64);
  });

  it('parses a request head off the wire, and refuses what is not one', () => {
    const head = parseHead(Buffer.from('GET /sockjs/123/abc/xhr?x=1 HTTP/1.1\r\nHost: a\r\nOrigin: http://o\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody'));
    assert.deepEqual(head, { method: 'GET', url: '/sockjs/123/abc/xhr?x=1', headers: { host: 'a', origin: 'http://o', 'x-a': '1, 2' } });
    assert.equal(parseHead(Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n')), null, 'incomplete');
    assert.equal(parseHead(Buffer.from('NOT HTTP\r\n\r\n')), null);
    assert.equal(parseHead(Buffer.from('GET / HTTP/1.1\r\nno colon\r\n\r\n')), null);
  });
  it('serves a connection handed over IPC with the options its server gives accepted ones (no Nagle delay)', async function () {
    this.timeout(30_000);
    const child = fork(path.join(__dirname, 'support', 'handoff-child.ts'), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const messages: { type: string; noDelay?: boolean | null }[] = [];
    child.on('message', (m: { type: string }) => messages.push(m));
    const accepting = net.createServer({ noDelay: false });
    try {
      await eventually(() => messages.some((m) => m.type === 'ready'), 'the worker process to start', 20_000);
      await new Promise<void>((r) => accepting.listen(0, '127.0.0.1', r));
      accepting.on('connection', (socket) => {
        // What the primary does: the head it read goes along with the socket itself.
        socket.once('data', (head: Buffer) => {
          (socket as unknown as { _handle?: { readStop?: () => number } | null })._handle?.readStop?.();
          child.send({ type: MSG_CONNECTION, head: head.toString('base64') }, socket, { keepOpen: false });
        });
      });
      const port = (accepting.address() as net.AddressInfo).port;
      const body = await new Promise<string>((resolve, reject) => {
        http.get(`http://127.0.0.1:${port}/handed`, { agent: false }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        }).on('error', reject);
      });
      assert.equal(body, 'served /handed');
      const accepted = messages.filter((m) => m.type === 'accepted');
      assert.equal(accepted.length, 1);
      assert.equal(accepted[0]?.noDelay, true, 'TCP_NODELAY set on the handed-over socket, as http.Server sets it on its own');
    } finally {
      accepting.close();
      child.kill();
    }
  });
});

describe('workers: one port, 2 worker processes (CLUSTER_WORKERS_COUNT=2)', function () {
  this.timeout(120_000);
  let primary: ChildInstance;
  let watcher: Registry;
  let port: number;
  let url: string;
  const open: DdpClient[] = [];
  const serving = (v: MembershipView, id: string): boolean => v.byId.get(id)?.state === 'serving' && v.byId.get(id)?.healthy === true;
  const stats = async (p = port): Promise<Stats> => (await getJson(`http://127.0.0.1:${p}/cluster/api/cluster`)).stats;
  const whoami = async (c: DdpClient): Promise<Whoami> => (await c.call('whoami')) as Whoami;
  /**
   * Until the primary routes to both workers (registered, serving, passing its health checks) and
   * every worker sees the same three healthy members (a polling session's rendezvous member is
   * the same wherever its request lands).
   */
  const primarySeesAll = (): Promise<Stats> => eventually(async () => {
    const s = await stats();
    const workers = s.workers.workers ?? [];
    if (s.healthyMembers !== 3 || !workers.every((w) => w.up)) return false;
    const seen = await Promise.all(workers.map(async (w) => (await stats(w.port)).healthyMembers));
    return seen.every((n) => n === 3) && s;
  }, 'the primary and its 2 workers see each other healthy', 60_000);

  before(async () => {
    const discoveryUrl = uniqueDbUrl(mongo().url, 'workers');
    port = await freePort();
    watcher = new Registry({
      config: parseConfig({ discoveryUrl, secret: TEST_SECRET, instanceId: 'workers-watcher' }, {}),
      logger: createLogger('silent'), load: () => EMPTY_LOAD,
    });
    watcher.start();
    primary = await spawnInstance('m', {
      CLUSTER_DISCOVERY_URL: discoveryUrl, PORT: String(port), CLUSTER_WORKERS_COUNT: '2',
      CLUSTER_DRAIN_WINDOW: '1s', CLUSTER_SLOW_START: '0', CLUSTER_LOG_LEVEL: 'info',
    });
    url = primary.url;
    await waitForEvent(watcher, 'view', () => IDS.every((id) => serving(watcher.view(), id)), 'primary and 2 workers serving', 60_000)
      .catch((err: unknown) => { throw new Error(`${String(err)}: ${JSON.stringify(watcher.view().members.map((m) => [m.id, m.state, m.healthy]))}\n${primary.logs.slice(-20).map((l) => l.line).join('\n')}`); });
    await primarySeesAll();
  });

  afterEach(async () => {
    await Promise.all(open.splice(0).map((c) => c.close().catch(() => undefined)));
  });

  after(async () => {
    await Promise.all(open.splice(0).map((c) => c.close().catch(() => undefined)));
    await primary?.kill('SIGKILL');
    // Workers notice their primary is gone and leave on their own.
    await watcher?.close();
  });

  it('hands new raw /websocket and sockjs websockets to the workers: the socket itself, clientAddress exact', async () => {
    const before = await stats();
    const clients: DdpClient[] = [];
    for (let i = 0; i < 9; i++) {
      const c = i % 3 === 2
        ? await sockjsDdp(url, { transports: ['websocket'] })
        : await wsDdp(url, { localAddress: '127.0.0.2' });
      clients.push(c);
      open.push(c);
    }
    const who = await Promise.all(clients.map(whoami));
    const on = new Set(who.map((w) => w.instanceId));
    assert.ok(on.has('m-w1') && on.has('m-w2'), `sessions on both workers: ${JSON.stringify(who)}`);
    who.forEach((w, i) => {
      if (i % 3 !== 2) assert.equal(w.clientAddress, '127.0.0.2', `client address through a handoff: ${JSON.stringify(w)}`);
    });
    const after = await stats();
    const onWorkers = who.filter((w) => w.instanceId !== 'm').length;
    const handed = (after.workers.handoff?.handedOff ?? 0) - (before.workers.handoff?.handedOff ?? 0);
    assert.ok(handed >= onWorkers, `every worker session came by handoff (${handed} handed off, ${onWorkers} on workers)`);
    const workers = after.workers.workers ?? [];
    const hops = await Promise.all(workers.map(async (w) => (await stats(w.port)).hopsIn));
    assert.deepEqual(hops, [0, 0], 'no session reached a worker through a hop');
  });

  it('keeps xhr-polling sessions sticky across workers, every request on a new connection', async () => {
    const sockjsBase = toSockjsUrl(url);
    const sessions = await Promise.all(Array.from({ length: 6 }, () => rawXhrDdp(() => sockjsBase)));
    const ids: string[] = [];
    for (const s of sessions) {
      const first = (await s.call('whoami')) as Whoami;
      for (let k = 0; k < 3; k++) assert.equal(((await s.call('whoami')) as Whoami).instanceId, first.instanceId, 'same member every time');
      assert.equal(first.clientAddress, '127.0.0.1');
      ids.push(first.instanceId);
    }
    assert.ok(ids.some((id) => id !== 'm'), `some xhr sessions live on a worker: ${ids.join(',')}`);
  });

  it('serves a kept-alive connection that carries another session\'s request later (through the hop)', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const sockjsBase = toSockjsUrl(url);
      const sessions = await Promise.all(Array.from({ length: 6 }, () => rawXhrDdp(() => sockjsBase)));
      const homes = await Promise.all(sessions.map(async (s) => ((await s.call('whoami')) as Whoami).instanceId));
      assert.ok(new Set(homes).size >= 2, `sessions on several members: ${homes.join(',')}`);
      // One kept-alive connection, every session's send and poll on it in turn.
      const post = (path: string, body?: string): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
        const req = http.request(`${sockjsBase}/${path}`, { method: 'POST', agent, headers: body ? { 'content-type': 'text/plain' } : {} }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        });
        req.on('error', reject);
        req.end(body);
      });
      for (const [i, s] of sessions.entries()) {
        const path = `${s.poll.serverId}/${s.poll.sessionId}`;
        const sent = await post(`${path}/xhr_send`, JSON.stringify([JSON.stringify({ msg: 'method', id: `k${i}`, method: 'whoami', params: [] })]));
        assert.equal(sent.status, 204);
        const polled = await post(`${path}/xhr`);
        assert.match(polled.body, new RegExp(`"instanceId\\\\":\\\\"${homes[i]}\\\\"`), `session ${i} answered by its home ${homes[i]}: ${polled.body}`);
      }
    } finally {
      agent.destroy();
    }
  });

  it('answers sockjs info in the worker it pins the session to: a kept-alive client then talks to that worker alone', async () => {
    const workers = (await stats()).workers.workers ?? [];
    const byHash = new Map(workers.map((w) => [endpointHash(`http://127.0.0.1:${w.port}`), w]));
    const hopsBefore = await Promise.all(workers.map(async (w) => (await stats(w.port)).hopsIn));
    const pinnedTo: string[] = [];
    // The primary serves too and keeps new sessions while it is not meaningfully more loaded than
    // its workers (what earlier tests left open decides that): each time info pins the primary, it
    // gets a real DDP session there, so its load grows until it pins to a worker. Bounded: 30.
    for (let i = 0; i < 30 && !pinnedTo.some((id) => id.startsWith('m-w')); i++) {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      try {
        const req = (method: string, target: string): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
          http.request(target, { method, agent }, (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
          }).on('error', reject).end();
        });
        const info = JSON.parse((await req('GET', `${url}/sockjs/info`)).body) as { base_url?: string };
        const hash = /\/cluster-ddp\/([0-9a-f]+)\//.exec(info.base_url ?? '')?.[1] ?? '';
        const worker = byHash.get(hash);
        pinnedTo.push(worker?.instanceId ?? (hash ? 'm' : 'unpinned'));
        if (worker === undefined) {
          if (hash) open.push(await wsDdp(info.base_url ?? ''));
          continue;
        }
        // The session's first poll, on the same kept-alive connection: the worker serves it itself.
        const opened = await req('POST', `${info.base_url}/123/info${i}abcd/xhr`);
        assert.equal(opened.body, 'o\n', `opened on ${worker.instanceId}`);
      } finally {
        agent.destroy();
      }
    }
    assert.ok(pinnedTo.some((id) => id.startsWith('m-w')), `info pinned sessions to the workers: ${pinnedTo.join()}`);
    const hopsAfter = await Promise.all(workers.map(async (w) => (await stats(w.port)).hopsIn));
    assert.deepEqual(hopsAfter, hopsBefore, 'no hop into a worker');
  });

  it('serves a malformed, oversized or slow first request in the primary, whose HTTP server answers it', async () => {
    const raw = (bytes: string): Promise<string> => new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => socket.write(bytes));
      let got = '';
      socket.on('data', (d: Buffer) => void (got += d.toString('latin1')));
      socket.on('close', () => resolve(got));
      socket.on('error', reject);
      socket.setTimeout(10_000, () => socket.destroy());
    });
    const before = (await stats()).workers.handoff;
    assert.match(await raw('NOT A REQUEST\r\n\r\n'), /^HTTP\/1\.1 400 /);
    assert.match(await raw(`GET /websocket HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`), /^HTTP\/1\.1 431 /);
    // A head that doesn't arrive within 2 s: given to the primary's server as it is, which answers once it completes.
    const slow = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => socket.write('GET /sockjs/info HTTP/1.1\r\nHost: x\r\n'));
      let got = '';
      socket.on('data', (d: Buffer) => {
        got += d.toString('latin1');
        if (got.includes('\r\n\r\n')) socket.destroy();
      });
      socket.on('close', () => resolve(got));
      socket.on('error', reject);
      void eventually(async () => ((await stats()).workers.handoff?.unparsed ?? 0) >= (before?.unparsed ?? 0) + 3, 'the slow head given up on', 10_000, 200)
        .then(() => socket.write('\r\n'), reject);
    });
    assert.match(slow, /^HTTP\/1\.1 200 /);
    const after = (await stats()).workers.handoff;
    assert.equal(after?.handedOff, before?.handedOff, 'none of them went to a worker');
    assert.ok((after?.unparsed ?? 0) >= (before?.unparsed ?? 0) + 3, JSON.stringify({ before, after }));
  });

  it('kill -9 of a worker: only its sessions drop, it is restarted and takes sessions again', async () => {
    // Sessions from earlier tests may still load the workers: open until worker 1 has some.
    const clients: DdpClient[] = [];
    const who: Whoami[] = [];
    while (clients.length < 40 && (!who.some((w) => w.instanceId === 'm-w1') || who.every((w) => w.instanceId === 'm-w1'))) {
      const c = await wsDdp(url);
      open.push(c);
      clients.push(c);
      who.push(await whoami(c));
    }
    const w1 = ((await stats()).workers.workers ?? []).find((w) => w.instanceId === 'm-w1');
    assert.ok(w1?.pid, 'worker 1 is running');
    const victims = clients.filter((_, i) => who[i]?.instanceId === 'm-w1');
    const others = clients.filter((_, i) => who[i]?.instanceId !== 'm-w1');
    assert.ok(victims.length > 0 && others.length > 0, JSON.stringify(who));
    process.kill(w1.pid, 'SIGKILL');
    await Promise.all(victims.map((c) => c.closed));
    // Everybody else is unaffected.
    const still = await Promise.all(others.map((c, i) => whoami(c).catch((err: unknown) => {
      throw new Error(`session ${i} (${JSON.stringify(who.filter((w) => w.instanceId !== 'm-w1')[i])}) after the kill: ${String(err)}\n${primary.logs.slice(-30).map((l) => l.line).join('\n')}`);
    })));
    assert.ok(still.every((w) => w.instanceId !== 'm-w1'));
    const back = await eventually(async () => {
      const w = ((await stats()).workers.workers ?? []).find((x) => x.instanceId === 'm-w1');
      return w !== undefined && w.up && w.pid !== w1.pid && w.restarts >= 1 && w;
    }, 'worker 1 restarted', 30_000);
    assert.ok(back.pid);
    await waitForEvent(watcher, 'view', () => serving(watcher.view(), 'm-w1'), 'm-w1 serving again', 30_000);
    await primarySeesAll();
    const fresh = await eventually(async () => {
      const c = await wsDdp(url);
      open.push(c);
      return (await whoami(c)).instanceId === 'm-w1';
    }, 'a new session lands on the restarted worker', 30_000);
    assert.ok(fresh);
  });

  it('SIGTERM drains the primary and every worker (paced), deregisters them, then exits', async () => {
    const clients = await Promise.all(Array.from({ length: 6 }, () => wsDdp(url)));
    open.push(...clients);
    const pids = ((await stats()).workers.workers ?? []).map((w) => w.pid as number);
    assert.equal(pids.length, 2);
    const startedAt = Date.now();
    primary.proc.kill('SIGTERM');
    await waitForEvent(watcher, 'view', () => IDS.every((id) => watcher.view().byId.get(id)?.state !== 'serving'), 'all draining', 20_000);
    await Promise.all(clients.map((c) => c.closed));
    await primary.exited;
    const tookMs = Date.now() - startedAt;
    for (const pid of pids) assert.throws(() => process.kill(pid, 0), /ESRCH/, `worker ${pid} exited`);
    await waitForEvent(watcher, 'view', () => IDS.every((id) => !watcher.view().byId.has(id)), 'all deregistered', 20_000);
    assert.ok(primary.proc.exitCode !== null || primary.proc.signalCode !== null);
    assert.ok(tookMs < 30_000, `drained in ${tookMs} ms`);
  });
});
