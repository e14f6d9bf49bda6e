import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { HealthChecker, REFRESH_GAP_MS, overlayHealth, type HealthStatus } from '../lib/balancer/health';
import { FEED_ACTIVE_MS, FEED_CONTENT_TYPE, FEED_KEEPALIVE_MS, FEED_TICK_MS, LoadFeed } from '../lib/balancer/feed';
import { eventually, waitForEvent } from './support/wait';
import { buildView, viewFromMembers, type Member, type MembershipView } from '../lib/discovery/view';
import { endpointHash } from '../lib/sign';

/** A real server answering the health route like attach() does. */
async function peerServer(id: () => string, status = 'serving'): Promise<{ server: http.Server; port: number }> {
  const server = http.createServer((req, res) => {
    if (req.url !== '/cluster/health') return void res.writeHead(404).end();
    res.writeHead(status === 'serving' ? 200 : 503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status, id: id(), sessions: 7, capacity: 100, at: Date.now() }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port };
}

function viewOf(peers: { id: string; port: number; ageMs?: number; service?: string }[]): MembershipView {
  return buildView({
    at: 0, self: null, staleMs: 3000, discoveryOk: true, stale: false,
    observed: peers.map((p) => ({
      ageMs: p.ageMs ?? 100,
      entry: {
        _id: p.id, service: p.service ?? 'web', endpoint: `http://127.0.0.1:${p.port}`, endpointHash: endpointHash(`http://127.0.0.1:${p.port}`),
        balancer: null, state: 'serving', appVersion: null, pkgVersion: '0', host: 'h', pid: 1, startedAt: new Date(), heartbeatAt: new Date(),
        heartbeatMs: 1000, seq: 1, servingMs: 1000, load: { sessions: 0, capacity: 10, elu: 0, delayMs: 0, cpu: 0, rss: 0 }, sig: null,
      },
    })),
  });
}

function waitStatus(checker: HealthChecker, id: string, pred: (s: HealthStatus) => boolean, what: string): Promise<HealthStatus> {
  return new Promise((resolve, reject) => {
    const now = checker.status(id);
    if (now && pred(now)) return resolve(now);
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), 10_000);
    const on = (changed: string, s: HealthStatus): void => {
      if (changed !== id || !pred(s)) return;
      clearTimeout(timer);
      checker.off('change', on);
      resolve(s);
    };
    checker.on('change', on);
  });
}

describe('health checks (real peers over http)', function () {
  this.timeout(30_000);
  const servers: http.Server[] = [];
  let checker: HealthChecker;
  beforeEach(() => {
    checker = new HealthChecker({ intervalMs: 100, timeoutMs: 300, fall: 2, rise: 2, path: '/cluster/health' });
  });
  afterEach(() => {
    checker.close();
    for (const s of servers.splice(0)) s.closeAllConnections(), s.close();
  });

  it('marks a peer down after `fall` failed checks and up again after `rise` good ones', async () => {
    const peer = await peerServer(() => 'p');
    servers.push(peer.server);
    checker.update(viewOf([{ id: 'p', port: peer.port }]));
    checker.start();
    const up = await waitStatus(checker, 'p', (s) => s.up && s.rttMs !== null, 'first good check');
    assert.equal(up.state, 'serving');
    assert.deepEqual(up.load && { sessions: up.load.sessions, capacity: up.load.capacity }, { sessions: 7, capacity: 100 });
    peer.server.closeAllConnections();
    peer.server.close();
    const down = await waitStatus(checker, 'p', (s) => !s.up, 'down');
    assert.match(down.reason, /ECONNREFUSED/);
    peer.server.listen(peer.port, '127.0.0.1');
    await once(peer.server, 'listening');
    await waitStatus(checker, 'p', (s) => s.up, 'up again');
  });

  it('refreshes only the peers of the service a session was routed in: other services\' peers wait for their round', async () => {
    const hits = { web: 0, admin: 0 };
    const serverFor = (service: 'web' | 'admin'): http.Server => http.createServer((_req, res) => {
      hits[service]++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: 'serving', id: service, sessions: 1, capacity: 100, opened: hits[service], at: Date.now() }));
    });
    const web = serverFor('web');
    const admin = serverFor('admin');
    for (const s of [web, admin]) {
      s.listen(0, '127.0.0.1');
      await once(s, 'listening');
      servers.push(s);
    }
    const slow = new HealthChecker({ intervalMs: 60_000, timeoutMs: 1000, fall: 2, rise: 2, path: '/cluster/health' });
    try {
      slow.update(viewOf([
        { id: 'web', port: (web.address() as AddressInfo).port, service: 'web' },
        { id: 'admin', port: (admin.address() as AddressInfo).port, service: 'admin' },
      ]));
      slow.start();
      // Several refreshes, each after the one before was answered, all for 'web'.
      for (let k = 1; k <= 3; k++) {
        await eventually(() => {
          slow.refresh('web');
          return slow.status('web')?.load?.opened === k ? true : undefined;
        }, `refresh ${k} of the web peer`, 5000, 2 * REFRESH_GAP_MS);
      }
      assert.equal(hits.admin, 0, 'the admin peer was never checked');
      slow.refresh();
      await eventually(() => (hits.admin === 1 ? true : undefined), 'a refresh of every service reaches the admin peer', 5000, 20);
    } finally {
      slow.close();
    }
  });

  it('refreshes the load of a peer on demand between rounds, one check in flight at a time, with its opened count', async () => {
    let hits = 0;
    const server = http.createServer((req, res) => {
      hits++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: 'serving', id: 'p', sessions: hits, capacity: 100, opened: 10 * hits, at: Date.now() + hits }));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    servers.push(server);
    const slow = new HealthChecker({ intervalMs: 60_000, timeoutMs: 1000, fall: 2, rise: 2, path: '/cluster/health' });
    try {
      slow.update(viewOf([{ id: 'p', port: (server.address() as AddressInfo).port }]));
      slow.refresh();
      assert.equal(slow.status('p'), null, 'not started: no checks');
      slow.start();
      for (let k = 0; k < 5; k++) slow.refresh();
      const first = await waitStatus(slow, 'p', (s) => s.load !== null, 'first refresh');
      assert.deepEqual(first.load && { sessions: first.load.sessions, opened: first.load.opened }, { sessions: 1, opened: 10 });
      assert.equal(hits, 1, 'five refreshes while one check was in flight: one request');
      // Later refreshes (at least REFRESH_GAP_MS apart) bring newer figures, long before the next round.
      const second = await eventually(() => {
        slow.refresh();
        const st = slow.status('p');
        return st?.load?.opened === 20 ? st : undefined;
      }, 'a second refresh', 5000, 2 * REFRESH_GAP_MS);
      assert.equal(second.load?.sessions, 2);
    } finally {
      slow.close();
    }
  });

  it('is down when another instance answers at the endpoint, and reports draining', async () => {
    let who = 'someone-else';
    const peer = await peerServer(() => who, 'draining');
    servers.push(peer.server);
    checker.update(viewOf([{ id: 'p', port: peer.port }]));
    checker.start();
    const s = await waitStatus(checker, 'p', (x) => !x.up, 'down for the wrong id');
    assert.match(s.reason, /another instance/);
    who = 'p';
    const ok = await waitStatus(checker, 'p', (x) => x.up, 'up');
    assert.equal(ok.state, 'draining', '503 while draining is alive, with its state');
  });

  it('marks a peer down at once on a refused connect (passive)', async () => {
    const peer = await peerServer(() => 'p');
    servers.push(peer.server);
    checker.update(viewOf([{ id: 'p', port: peer.port }]));
    checker.markDown('p', 'ECONNREFUSED');
    assert.equal(checker.status('p')?.up, false);
    checker.start();
    await waitStatus(checker, 'p', (s) => s.up, 'rises after good checks');
  });
});

/**
 * A real peer serving its load feed like attach() does (the gateway's authentication is stood for
 * by a header check; the gateway's own is tested in tests/hardening.test.ts), and the plain health
 * route. `plain` counts the plain health requests; `watches` the watch requests.
 */
async function feedServer(id: string, maxWatchers?: number) {
  const figures = { sessions: 0, opened: 0 };
  const body = (): string => JSON.stringify({ status: 'serving', id, sessions: figures.sessions, capacity: 100, opened: figures.opened, pending: 0, at: Date.now() });
  const feed = new LoadFeed({ key: () => `${figures.sessions} ${figures.opened}`, body }, maxWatchers);
  const counts = { plain: 0, watches: 0, refused: 0 };
  const server = http.createServer((req, res) => {
    if (req.url === '/cluster/health?watch=1') {
      counts.watches++;
      if (req.headers['x-test-watch'] !== 'signed') return void res.writeHead(403).end();
      if (!feed.add(res)) {
        counts.refused++;
        res.writeHead(503).end();
      }
      return;
    }
    counts.plain++;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(body());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, feed, figures, counts, port: (server.address() as AddressInfo).port };
}

describe('load feeds (real peers over http)', function () {
  this.timeout(30_000);
  const servers: http.Server[] = [];
  const checkers: HealthChecker[] = [];
  // Rounds far apart: whatever arrives between them came over the feed or an on-demand check.
  const watcher = (): HealthChecker => {
    const c = new HealthChecker({
      intervalMs: 60_000, timeoutMs: 1000, fall: 2, rise: 2, path: '/cluster/health', watchHeaders: () => ({ 'x-test-watch': 'signed' }),
    });
    checkers.push(c);
    return c;
  };
  afterEach(() => {
    for (const c of checkers.splice(0)) c.close();
    for (const s of servers.splice(0)) s.closeAllConnections(), s.close();
  });
  /** A feed server and a checker whose watch of it streams. */
  const watchedPeer = async () => {
    const peer = await feedServer('p');
    servers.push(peer.server);
    const c = watcher();
    c.update(viewOf([{ id: 'p', port: peer.port }]));
    c.start();
    await eventually(() => c.watching === 1, 'the watch streams');
    return { peer, c };
  };

  it('pushes a peer\'s figures to its watcher as they change, and on-demand refreshes stop asking it', async () => {
    const { peer, c } = await watchedPeer();
    const held = c.heldAt('p', c.status('p')?.load?.at ?? 0);
    assert.equal(held !== null && Date.now() - held <= 2 * FEED_TICK_MS, true, 'a quiet streaming feed vouches for figures about a tick old');
    for (let k = 1; k <= 5; k++) {
      peer.figures.sessions = k;
      peer.figures.opened = 10 * k;
      for (let r = 0; r < 3; r++) c.refresh();
      await waitForEvent(c, 'load', () => (c.status('p')?.load?.sessions === k ? true : undefined), `sessions ${k} over the feed`, 5000);
      assert.equal(c.status('p')?.load?.opened, 10 * k);
    }
    assert.equal(peer.counts.plain, 0, 'no health request while the feed streams, however often refreshed');
    assert.equal(peer.counts.watches, 1);
    assert.equal(peer.feed.size, 1);
  });

  it('beats after a change (a line every tick for FEED_ACTIVE_MS, changed or not), then writes only changes and keep-alives, and says so in its media type', async () => {
    const peer = await feedServer('p');
    servers.push(peer.server);
    const arrivals: number[] = [];
    let type = '';
    const req = http.get({ host: '127.0.0.1', port: peer.port, path: '/cluster/health?watch=1', headers: { 'x-test-watch': 'signed' } }, (res) => {
      type = String(res.headers['content-type']);
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        for (const c of chunk) if (c === '\n') arrivals.push(Date.now());
      });
    });
    req.on('error', () => undefined);
    try {
      await eventually(() => arrivals.length >= 1, 'the first line');
      assert.equal(type, `${FEED_CONTENT_TYPE}; beat=${FEED_TICK_MS}; active=${FEED_ACTIVE_MS}`);
      const changed = Date.now();
      peer.figures.sessions = 1;
      // Until a keep-alive came well after the beats should have stopped.
      const end = changed + FEED_ACTIVE_MS + FEED_KEEPALIVE_MS + 200;
      await eventually(() => (arrivals[arrivals.length - 1] as number) >= end, 'a keep-alive after the beats', 10_000);
      const beats = arrivals.filter((t) => t > changed && t <= changed + FEED_ACTIVE_MS - 50);
      assert.ok(beats.length >= FEED_ACTIVE_MS / FEED_TICK_MS / 4, `${beats.length} lines in the ${FEED_ACTIVE_MS} ms after a change`);
      const first = arrivals.findIndex((t) => t > changed + FEED_ACTIVE_MS + 100);
      const gaps = arrivals.slice(first).map((t, k) => t - (arrivals[first + k - 1] as number));
      assert.ok(gaps.length >= 2 && gaps.every((g) => g >= FEED_KEEPALIVE_MS - 100), `gaps between lines once quiet: ${gaps.join(', ')} ms`);
    } finally {
      req.destroy();
    }
  });

  it('holds a beating feed\'s figures only as of its last line while it beats, a quiet or older feed\'s until about a tick ago', async () => {
    // A peer whose lines the test writes itself: when, and what its media type says of beats.
    const line = (sessions: number, at = Date.now()): string =>
      `${JSON.stringify({ status: 'serving', id: 'p', sessions, capacity: 100, opened: sessions, pending: 0, at })}\n`;
    let watch: http.ServerResponse | null = null;
    let type = `${FEED_CONTENT_TYPE}; beat=${FEED_TICK_MS}; active=60000`;
    const server = http.createServer((req, res) => {
      if (req.url !== '/cluster/health?watch=1') return void res.writeHead(200, { 'content-type': 'application/json' }).end(line(0));
      res.writeHead(200, { 'content-type': type });
      res.write(line(0));
      watch = res;
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    servers.push(server);
    const c = watcher();
    c.update(viewOf([{ id: 'p', port: (server.address() as AddressInfo).port }]));
    c.start();
    const write = (text: string): void => void (watch as unknown as http.ServerResponse).write(text);
    const at = (): number => c.status('p')?.load?.at as number;
    const lag = (): number => Date.now() - (c.heldAt('p', at()) as number);
    const rewatch = async (t: string): Promise<void> => {
      type = t;
      (watch as unknown as http.ServerResponse).end();
      await eventually(() => c.watching === 0, 'the watch ended');
      await eventually(() => c.watching === 1, 'watched again', 5000);
    };
    await eventually(() => c.watching === 1 && c.status('p')?.load?.sessions === 0, 'the first line');
    assert.ok(lag() <= 2 * FEED_TICK_MS, `no change seen yet: held until about a tick ago (${lag()} ms)`);

    write(line(1));
    await eventually(() => c.status('p')?.load?.sessions === 1, 'the changed figures');
    assert.equal(c.heldAt('p', at() - 1), null, 'a view older than the last line\'s figures: only as of its report');
    await eventually(() => lag() >= 5 * FEED_TICK_MS, 'silence after a change: the figures held only as of the line', 5000, 5);
    const held = at();
    const beatAt = Date.now();
    write(line(1, beatAt));
    await eventually(() => lag() <= 2 * FEED_TICK_MS, 'a beat vouches for them again', 5000, 5);
    assert.equal(at(), held, 'a beat with the same figures makes no new status (no view rebuild)');
    await eventually(() => Date.now() - beatAt >= 5 * FEED_TICK_MS, 'silence again', 5000, 5);
    assert.ok(lag() >= 5 * FEED_TICK_MS, `silent since the beat: held as of the beat (${lag()} ms)`);

    // Once its active time after the change is over, the feed only writes changes: quiet again.
    await rewatch(`${FEED_CONTENT_TYPE}; beat=${FEED_TICK_MS}; active=200`);
    const changed = Date.now();
    write(line(2));
    await eventually(() => c.status('p')?.load?.sessions === 2, 'the changed figures', 5000, 5);
    await eventually(() => lag() >= 5 * FEED_TICK_MS, 'silence while it should beat', 5000, 5);
    await eventually(() => lag() <= 2 * FEED_TICK_MS, 'quiet once no change for its active time', 5000, 5);
    assert.ok(Date.now() - changed >= 200 - 2 * FEED_TICK_MS, `not before the feed stops beating (${Date.now() - changed} ms)`);

    // An older feed (no beat parameters) writes on change only: its silence vouches for its figures at once.
    await rewatch(FEED_CONTENT_TYPE);
    write(line(3));
    await eventually(() => c.status('p')?.load?.sessions === 3, 'the changed figures', 5000, 5);
    const changedOld = Date.now();
    await eventually(() => Date.now() - changedOld >= 5 * FEED_TICK_MS, 'silence after a change', 5000, 5);
    assert.ok(lag() <= 2 * FEED_TICK_MS, `a feed that doesn't beat: held until about a tick ago (${lag()} ms)`);
  });

  it('falls back to on-demand checks when the feed ends, and watches again after WATCH_RETRY_MS', async () => {
    const { peer, c } = await watchedPeer();
    peer.feed.close();
    await eventually(() => c.watching === 0, 'the watcher sees the feed end');
    assert.equal(c.heldAt('p', Date.now()), null, 'figures are only as fresh as their report without a feed');
    c.refresh();
    await eventually(() => peer.counts.plain === 1, 'a refresh checks the peer again');
    await eventually(() => c.watching === 1, 'the watch is opened again', 5000);
    assert.equal(peer.counts.watches, 2);
  });

  it('keeps checking on demand a peer that answers a watch with a plain health answer (an older version)', async () => {
    let watches = 0;
    let plain = 0;
    const old = http.createServer((req, res) => {
      if (req.url?.includes('watch')) watches++;
      else plain++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: 'serving', id: 'p', sessions: 3, capacity: 100, opened: 3, at: Date.now() }));
    });
    old.listen(0, '127.0.0.1');
    await once(old, 'listening');
    servers.push(old);
    const c = watcher();
    c.update(viewOf([{ id: 'p', port: (old.address() as AddressInfo).port }]));
    c.start();
    await eventually(() => watches === 1, 'the watch was asked for');
    await eventually(() => {
      c.refresh();
      return plain >= 1 ? true : undefined;
    }, 'on-demand checks go on', 5000, 2 * REFRESH_GAP_MS);
    assert.equal(c.watching, 0);
    assert.equal(c.status('p')?.load?.sessions, 3);
  });

  it('keeps a feed line\'s figures over a check answer taken just before them', async () => {
    const peer = await feedServer('p');
    servers.push(peer.server);
    peer.figures.sessions = 5;
    let checks = 0;
    let c: HealthChecker | null = null;
    // Checks answer figures taken 300 ms before the feed line the watcher holds (as if in flight
    // while that line came); not 300 ms before now, which is newer than a line up to a second old
    // (feed lines come on change, and every second), so it would rightly replace it on a slow machine.
    const stale = http.createServer((_req, res) => {
      checks++;
      const held = c?.status('p')?.load?.at ?? Date.now();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: 'serving', id: 'p', sessions: 1, capacity: 100, opened: 0, at: held - 300 }));
    });
    stale.listen(0, '127.0.0.1');
    await once(stale, 'listening');
    servers.push(stale);
    // Feed from one server, checks from the other: a view whose endpoint is the stale server, the
    // feed reached through a watch header that the test's feed server accepts on its own port.
    c = new HealthChecker({ intervalMs: 100, timeoutMs: 1000, fall: 2, rise: 2, path: '/cluster/health', watchHeaders: () => ({ 'x-test-watch': 'signed' }) });
    checkers.push(c);
    const relay = http.createServer((req, res) => {
      const target = req.url === '/cluster/health?watch=1' ? peer.port : (stale.address() as AddressInfo).port;
      const up = http.request({ host: '127.0.0.1', port: target, path: req.url, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      });
      up.end();
    });
    relay.listen(0, '127.0.0.1');
    await once(relay, 'listening');
    servers.push(relay);
    c.update(viewOf([{ id: 'p', port: (relay.address() as AddressInfo).port }]));
    c.start();
    await eventually(() => c.watching === 1 && c.status('p')?.load?.sessions === 5, 'the feed\'s figures');
    await eventually(() => checks >= 3, 'three checks answered meanwhile');
    assert.equal(c.status('p')?.load?.sessions, 5, 'older check answers did not replace them');
    assert.equal(c.status('p')?.up, true);
  });

  it('refuses watches past its cap, and ends every watch when closed', async () => {
    const peer = await feedServer('p', 2);
    servers.push(peer.server);
    const cs = [watcher(), watcher(), watcher()];
    for (const c of cs) {
      c.update(viewOf([{ id: 'p', port: peer.port }]));
      c.start();
    }
    await eventually(() => peer.counts.refused >= 1 && peer.feed.size === 2, 'two watches served, the third refused');
    assert.equal(cs.filter((c) => c.watching === 1).length, 2);
    peer.feed.close();
    await eventually(() => cs.every((c) => c.watching === 0), 'every watcher sees its feed end');
    assert.equal(peer.feed.size, 0);
  });
});

describe('overlayHealth', () => {
  const rebuild = (v: MembershipView) => (members: Member[]) => viewFromMembers(members, v);
  const base = viewOf([{ id: 'a', port: 1 }, { id: 'b', port: 2 }, { id: 'old', port: 3, ageMs: 4000 }, { id: 'gone', port: 4, ageMs: 20_000 }]);
  const st = (up: boolean, state: HealthStatus['state'] = 'serving'): HealthStatus => ({ up, checkedAt: 0, rttMs: 1, reason: 'x', state, load: null });

  it('returns the same view when checks agree or have no result', () => {
    assert.equal(overlayHealth(base, () => null, 3000, rebuild(base)), base);
    assert.equal(overlayHealth(base, (id) => (id === 'a' ? st(true) : null), 3000, rebuild(base)), base);
  });

  it('takes a peer down by checks whatever its heartbeat, and applies the state it reported', () => {
    const v = overlayHealth(base, (id) => (id === 'a' ? st(false) : id === 'b' ? st(true, 'draining') : null), 3000, rebuild(base));
    assert.equal(v.byId.get('a')?.healthy, false);
    assert.equal(v.byId.get('b')?.state, 'draining');
  });

  it('keeps a reachable peer through a short heartbeat gap but not a long one', () => {
    const v = overlayHealth(base, () => st(true), 3000, rebuild(base));
    assert.equal(v.byId.get('old')?.healthy, true, '4 s old heartbeat, checks fine');
    assert.equal(v.byId.get('gone')?.healthy, false, '20 s old heartbeat: not trusted any more');
  });

  it('takes fresher load figures from a check, with their time, but not from a down peer', () => {
    const m = base.byId.get('a') as Member;
    const load = { sessions: 42, capacity: 500, at: m.heartbeatAt + 700 };
    const v = overlayHealth(base, (id) => (id === 'a' ? { ...st(true), load } : null), 3000, rebuild(base));
    assert.equal(v.byId.get('a')?.load.sessions, 42);
    assert.equal(v.byId.get('a')?.load.capacity, 500);
    assert.equal(v.byId.get('a')?.heartbeatAt, load.at);
    const older = overlayHealth(base, (id) => (id === 'a' ? { ...st(true), load: { ...load, at: m.heartbeatAt - 1 } } : null), 3000, rebuild(base));
    assert.equal(older.byId.get('a')?.load.sessions, m.load.sessions);
    const down = overlayHealth(base, (id) => (id === 'a' ? { ...st(false), load } : null), 3000, rebuild(base));
    assert.equal(down.byId.get('a')?.load.sessions, m.load.sessions);
  });

  it('takes the sessions a peer ever opened from its check along with its load', () => {
    const m = base.byId.get('a') as Member;
    const load = { sessions: 3, capacity: 500, at: m.heartbeatAt + 700, opened: 1234 };
    const v = overlayHealth(base, (id) => (id === 'a' ? { ...st(true), load } : null), 3000, rebuild(base));
    assert.equal(v.byId.get('a')?.load.opened, 1234);
  });
});
