import assert from 'node:assert/strict';
import type { AttachOptions } from '../lib/attach';
import { dashboardPasswordFrom } from '../lib/dashboard/auth';
import { mongo, uniqueDbUrl } from './support/mongo';
import { TEST_SECRET, servingIds, startCluster, startInstance, waitView, type Instance } from './support/cluster';
import { RetryingDdpClient, type Transport } from './support/retrying-client';
import { eventually } from './support/wait';

/** Rebalancing at a test's pace: small ages and tolerances, a brisk rate. */
const FAST: AttachOptions = {
  rebalanceRate: 20, rebalanceMinAgeMs: 500, rebalanceTolerance: 0.1, rebalanceToleranceSessions: 2, slowStartMs: 0,
};
const TRANSPORTS: readonly Transport[] = ['ws', 'sockjs-websocket', 'sockjs-xhr'];

describe('rebalancing (real instances, real retrying clients)', function () {
  this.timeout(120_000);
  let url: string;
  let cluster: Instance[] = [];
  let clients: RetryingDdpClient[] = [];
  let calling = false;
  let callers: Promise<void>[] = [];
  const figures: Record<string, unknown> = {};

  beforeEach(function () {
    url = uniqueDbUrl(mongo().url, (this.currentTest?.title ?? 'x').replace(/\W+/g, '_').slice(0, 24));
  });

  afterEach(async () => {
    calling = false;
    await Promise.all(callers.splice(0));
    await Promise.all(clients.splice(0).map((c) => c.close()));
    await Promise.all(cluster.splice(0).map((i) => i.close()));
  });

  after(() => process.stdout.write(`      figures: ${JSON.stringify(figures)}\n`));

  /** n retrying clients entering through `entries`, mixed transports, each connected and identified. */
  async function connect(n: number, entries: readonly string[]): Promise<RetryingDdpClient[]> {
    const out: RetryingDdpClient[] = [];
    for (let i = 0; i < n; i += 10) {
      const batch = await Promise.all(Array.from({ length: Math.min(10, n - i) }, async (_, k) => {
        const c = new RetryingDdpClient({ entries, transport: TRANSPORTS[(i + k) % TRANSPORTS.length] as Transport, callDeadlineMs: 30_000 });
        clients.push(c);
        await c.start();
        await c.whoami();
        return c;
      }));
      out.push(...batch);
    }
    return out;
  }

  /** Every client keeps calling a method (like an app does) until the test stops it. */
  function keepCalling(cs: readonly RetryingDdpClient[]): void {
    calling = true;
    callers = cs.map(async (c) => {
      while (calling) {
        await c.whoami();
        await new Promise((r) => setTimeout(r, 100 + Math.random() * 100));
      }
    });
  }

  const counts = (): Record<string, number> => Object.fromEntries(cluster.map((i) => [i.id, i.app.sessionCount()]));
  const maxOverMean = (c: Record<string, number>): number => {
    const v = Object.values(c);
    return Math.max(...v) / (v.reduce((a, b) => a + b, 0) / v.length);
  };
  const moved = (i: Instance): number => i.cluster.stats().rebalance.moved;

  it('scale-out: a new member gets its share of the existing sessions, each moved client disconnected once', async () => {
    cluster = await startCluster(['a', 'b'], url, () => ({ attach: FAST }));
    const cs = await connect(42, cluster.map((i) => i.url));
    keepCalling(cs);
    const c = await startInstance({ id: 'c', discoveryUrl: url, attach: FAST });
    cluster.push(c);
    await Promise.all(cluster.map((i) => waitView(i.cluster, `${i.id} sees c`, (v) => servingIds(v).length === 3)));
    const began = Date.now();
    const balanced = await eventually(() => {
      const n = counts();
      return Object.values(n).reduce((a, b) => a + b, 0) === 42 && maxOverMean(n) <= 1.2 && n;
    }, 'sessions balanced over a, b and c', 60_000, 100);
    figures.scaleOut = { balanced, tookMs: Date.now() - began, moved: cluster.map(moved) };
    assert.equal(moved(c), 0, 'the new member, under the mean, never sheds');
    calling = false;
    await Promise.all(callers.splice(0));
    const reconnects = cs.map((x) => x.reconnects.length);
    assert.ok(reconnects.every((n) => n <= 1), `each client disconnected at most once: ${reconnects.join(',')}`);
    assert.equal(reconnects.filter((n) => n === 1).length, moved(cluster[0] as Instance) + moved(cluster[1] as Instance));
    assert.equal(cs.reduce((n, x) => n + x.failedCalls, 0), 0, 'no failed method calls');
    // Settled: nobody sheds any more.
    await eventually(() => cluster.every((i) => !i.cluster.stats().rebalance.shedding), 'shedding stops', 10_000);
    // The dashboard (any instance) shows each member's moved count; a shedding member's own shows its episodes.
    const auth = { authorization: `Basic ${Buffer.from(`x:${dashboardPasswordFrom(TEST_SECRET)}`).toString('base64')}` };
    const shedder = cluster.find((i) => moved(i) > 0) as Instance;
    const api = await eventually(async () => {
      const r = await fetch(`${shedder.url}/cluster/api/cluster`, { headers: auth });
      const body = (await r.json()) as { totals: { moved: number }; members: { id: string; moved: number | null }[]; events: { kind: string; detail: string }[] };
      return body.events.some((e) => e.kind === 'rebalance') && body.totals.moved === moved(cluster[0] as Instance) + moved(cluster[1] as Instance) && body;
    }, 'rebalance events and moved counts on the dashboard', 10_000, 200);
    assert.equal(api.members.find((m) => m.id === 'c')?.moved, 0);
    const metrics = await (await fetch(`${shedder.url}/cluster/metrics`, { headers: auth })).text();
    assert.match(metrics, new RegExp(`ddp_cluster_sessions_closed_total\\{reason="rebalance"\\} ${moved(shedder)}\\b`));
  });

  it('a restarted member gets its share back, ramping with slow start', async () => {
    const opts: AttachOptions = { ...FAST, slowStartMs: 3000 };
    // A polling client that entered through c loses its session's path when c goes, and starts a
    // new session elsewhere; its old one stays on its owner for sockjs's disconnect_delay (Meteor:
    // 60 s, longer than the waits below): 5 s here, so the counts settle.
    const app = { disconnectDelay: 5000 };
    cluster = await startCluster(['a', 'b', 'c'], url, () => ({ attach: opts, app }));
    const cs = await connect(45, cluster.map((i) => i.url));
    // c goes away: its clients reconnect to a and b.
    const old = cluster.pop() as Instance;
    await old.close();
    await eventually(() => cluster.reduce((n, i) => n + i.app.sessionCount(), 0) === 45 && cs.every((x) => x.instanceId !== 'c'),
      'c\'s clients on a and b', 30_000, 100).catch((err: unknown) => {
      throw new Error(`${String(err)}: sessions ${JSON.stringify(cluster.map((i) => i.app.sessionCount()))}, clients on ${JSON.stringify(cs.map((x) => x.instanceId))}`);
    });
    const before = cs.map((x) => x.reconnects.length);
    keepCalling(cs);
    const c = await startInstance({ id: 'c', discoveryUrl: url, attach: opts, app });
    cluster.push(c);
    const began = Date.now();
    const balanced = await eventually(() => {
      const n = counts();
      return Object.values(n).reduce((a, b) => a + b, 0) === 45 && maxOverMean(n) <= 1.2 && n;
    }, 'sessions balanced again after the restart', 60_000, 100);
    figures.restart = { balanced, tookMs: Date.now() - began, moved: cluster.map(moved) };
    calling = false;
    await Promise.all(callers.splice(0));
    const extra = cs.map((x, k) => x.reconnects.length - (before[k] ?? 0));
    assert.ok(extra.every((n) => n <= 1), `each client moved at most once: ${extra.join(',')}`);
    assert.equal(cs.reduce((n, x) => n + x.failedCalls, 0), 0);
    assert.equal(moved(c), 0);
  });

  it('steady state: a balanced cluster moves nothing', async () => {
    cluster = await startCluster(['a', 'b', 'c'], url, () => ({ attach: { ...FAST, rebalanceToleranceSessions: 6 } }));
    const cs = await connect(45, cluster.map((i) => i.url));
    keepCalling(cs);
    // Ten decisions on every member (ten heartbeats), with clients active all along.
    const start = cluster.map((i) => i.cluster.stats().rebalance.decisions);
    await eventually(() => cluster.every((i, k) => i.cluster.stats().rebalance.decisions >= (start[k] ?? 0) + 10), 'ten decisions each', 30_000, 200);
    figures.steady = { sessions: counts(), moved: cluster.map(moved) };
    assert.deepEqual(cluster.map(moved), [0, 0, 0]);
    assert.ok(cs.every((x) => x.reconnects.length === 0));
  });

  it('drain moves the polling clients proxied through the draining instance before it exits', async () => {
    cluster = await startCluster(['a', 'b'], url, () => ({ attach: FAST }));
    const [a] = cluster as [Instance, Instance];
    // xhr-polling clients that can only enter through a; some are served by b (proxied through a).
    const viaA: RetryingDdpClient[] = [];
    for (let i = 0; i < 16; i++) {
      const c = new RetryingDdpClient({ entries: [a.url], transport: 'sockjs-xhr' });
      clients.push(c);
      viaA.push(await c.start());
      await c.whoami();
    }
    const proxied = viaA.filter((c) => c.instanceId === 'b');
    assert.ok(proxied.length > 0, 'some of a\'s polling clients are served by b');
    const report = await a.cluster.drain({ windowMs: 1000 });
    // Before a exits: each of them was disconnected once (and is back, proxied through a to b).
    await eventually(() => proxied.every((c) => c.reconnects.length >= 1), 'proxied polling clients moved by the drain', 20_000);
    figures.drainPolls = { proxied: proxied.length, closed: report.closed, reconnects: proxied.map((c) => c.reconnects.length) };
    assert.ok(proxied.every((c) => c.reconnects.length === 1), proxied.map((c) => c.reconnects.length).join(','));
    assert.equal(a.cluster.stats().rebalance.drained >= proxied.length, true);
  });

  it('a flapping member causes no ping-pong', async () => {
    // Default slow start: each time c is serving again it ramps (and must not shed what it has).
    const opts: AttachOptions = { ...FAST, slowStartMs: 30_000, rebalanceToleranceSessions: 6 };
    cluster = await startCluster(['a', 'b', 'c'], url, () => ({ attach: opts }));
    const cs = await connect(45, cluster.map((i) => i.url));
    keepCalling(cs);
    const [a, , c] = cluster as [Instance, Instance, Instance];
    for (let k = 0; k < 4; k++) {
      c.cluster.setState('draining');
      await waitView(a.cluster, 'a sees c draining', (v) => v.byId.get('c')?.state === 'draining');
      const d = a.cluster.stats().rebalance.decisions;
      await eventually(() => a.cluster.stats().rebalance.decisions >= d + 2, 'a decides twice meanwhile', 10_000, 100);
      c.cluster.setState('serving');
      await waitView(a.cluster, 'a sees c serving', (v) => v.byId.get('c')?.state === 'serving');
      const e = a.cluster.stats().rebalance.decisions;
      await eventually(() => a.cluster.stats().rebalance.decisions >= e + 2, 'a decides twice again', 10_000, 100);
    }
    figures.flapping = { sessions: counts(), moved: cluster.map(moved) };
    assert.deepEqual(cluster.map(moved), [0, 0, 0]);
    assert.ok(cs.every((x) => x.reconnects.length === 0));
  });
});
