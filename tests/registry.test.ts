import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { MongoClient } from 'mongodb';
import { parseConfig, type ClusterOptions } from '../lib/config';
import { Registry } from '../lib/discovery/registry';
import { DRAIN_FIELD, makeDrainRequest } from '../lib/commands';
import type { MembershipView } from '../lib/discovery/view';
import { EMPTY_LOAD } from '../lib/load';
import { createLogger, type LogSink } from '../lib/log';
import { mongo, uniqueDbUrl } from './support/mongo';
import { outageControl } from './support/outage';
import { waitForEvent } from './support/wait';

const SECRET = 'registry-test-secret-0123456789';

describe('discovery registry (real Mongo-compatible server)', function () {
  this.timeout(90_000);
  let url: string;
  const open: Registry[] = [];
  const children: ChildProcess[] = [];
  let lines: string[];
  const sink: LogSink = (line) => void lines.push(line);

  function registry(id: string, port: number, extra: ClusterOptions = {}): Registry {
    const r = new Registry({
      config: parseConfig({
        discoveryUrl: url, service: 'web', endpointUrl: `http://127.0.0.1:${port}`, secret: SECRET,
        instanceId: id, staleMs: 3000, ...extra,
      }, {}),
      logger: createLogger('debug', { instance: id }, sink),
      load: () => EMPTY_LOAD,
    });
    r.setState('serving');
    r.start();
    open.push(r);
    return r;
  }

  function waitView(r: Registry, what: string, pred: (v: MembershipView) => boolean, timeoutMs = 20_000): Promise<MembershipView> {
    return waitForEvent(r, 'view', () => (pred(r.view()) ? r.view() : undefined), what, timeoutMs);
  }

  const healthyIds = (v: MembershipView): string[] => v.members.filter((m) => m.healthy).map((m) => m.id);

  beforeEach(function () {
    url = uniqueDbUrl(mongo().url, this.currentTest?.title.replace(/\W+/g, '_').slice(0, 30) ?? 'x');
    lines = [];
  });

  afterEach(async () => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    await Promise.all(open.splice(0).map((r) => r.close()));
  });

  it('three registries see each other within two heartbeats', async () => {
    const rs = [registry('a', 3001), registry('b', 3002), registry('c', 3003)];
    const t0 = Date.now();
    await Promise.all(rs.map((r) => waitView(r, 'all three', (v) => healthyIds(v).length === 3)));
    const elapsed = Date.now() - t0;
    assert.ok(elapsed < 2 * 1000 + 1500, `took ${elapsed} ms`);
    const v = rs[0]!.view();
    assert.deepEqual(v.members.map((m) => m.id), ['a', 'b', 'c']);
    assert.equal(v.byService.get('web')?.length, 3);
    assert.equal(v.self?.id, 'a');
    assert.ok(v.members.every((m) => m.state === 'serving'));
    assert.equal(v.byEndpointHash.get(rs[1]!.view().self!.endpointHash)?.id, 'b');
  });

  it('emits join, change and leave; close removes an instance at once', async () => {
    const a = registry('a', 3001);
    const events: string[] = [];
    a.on('join', (m) => events.push(`join:${m.id}`));
    a.on('leave', (m) => events.push(`leave:${m.id}`));
    a.on('change', (m) => events.push(`change:${m.id}:${m.state}`));
    const b = registry('b', 3002);
    await waitView(a, 'b joins', (v) => v.byId.has('b'));
    b.setState('draining');
    await waitView(a, 'b draining', (v) => v.byId.get('b')?.state === 'draining');
    const closedAt = Date.now();
    await b.close();
    await waitView(a, 'b leaves', (v) => !v.byId.has('b'), 2500);
    assert.ok(Date.now() - closedAt < 2500);
    assert.deepEqual(events.filter((e) => e.endsWith(':b') || e.includes(':b:')), ['join:b', 'change:b:draining', 'leave:b']);
  });

  it('an instance that stops heartbeating (kill -9) turns unhealthy after the horizon', async () => {
    const a = registry('a', 3001);
    const child = spawn(process.execPath, ['--import', 'tsx', 'tests/support/registry-child.ts'], {
      env: { ...process.env, CLUSTER_DISCOVERY_URL: url, CLUSTER_SERVICE: 'web', CLUSTER_ENDPOINT_URL: 'http://127.0.0.1:3009',
        CLUSTER_SECRET: SECRET, CLUSTER_INSTANCE_ID: 'child', CLUSTER_STALE_HORIZON: '3000' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    await waitView(a, 'child healthy', (v) => v.byId.get('child')?.healthy === true, 30_000);
    const killedAt = Date.now();
    child.kill('SIGKILL');
    await once(child, 'exit');
    const v = await waitView(a, 'child unhealthy', (x) => x.byId.get('child')?.healthy === false, 10_000);
    const took = Date.now() - killedAt;
    assert.ok(took >= 1500, `dropped too early: ${took} ms`);
    assert.ok(v.byId.has('child'), 'still listed (for the dashboard) until cleanup');
  });

  it('ignores forged entries: no signature, wrong signature, wrong secret', async () => {
    const a = registry('a', 3001);
    await a.ready();
    const client = await MongoClient.connect(url);
    try {
      const col = client.db().collection<Record<string, unknown>>('clusterEndpoints');
      const base = { service: 'web', balancer: null, state: 'serving', startedAt: new Date(), heartbeatAt: new Date(), seq: 1 };
      await col.insertOne({ _id: 'nosig' as never, ...base, endpoint: 'http://evil.example:80' });
      await col.insertOne({ _id: 'badsig' as never, ...base, endpoint: 'http://evil.example:81', sig: 'AAAA' });
      // Signed properly but with another secret.
      const other = registry('other', 3004, { secret: 'another-secret-of-enough-bytes' });
      await other.ready();
      const b = registry('b', 3002);
      await waitView(a, 'b visible', (v) => v.byId.has('b'));
      await waitView(a, 'one more poll', (v) => v.byId.has('b'));
      const v = a.view();
      assert.deepEqual(v.members.map((m) => m.id), ['a', 'b']);
      assert.ok(![...v.byEndpointHash.values()].some((m) => m.endpoint.includes('evil')));
      const ignored = lines.filter((l) => l.includes('discovery.entry_ignored') && l.includes('"instance":"a"'));
      const reasons = ignored.map((l) => (JSON.parse(l) as { reason: string }).reason).sort();
      assert.ok(reasons.includes('unsigned') && reasons.includes('bad signature'), reasons.join());
      // Logged once each, not once per poll.
      const before = ignored.length;
      await waitView(a, 'two more polls', () => true);
      await new Promise<void>((resolve) => a.once('view', () => a.once('view', () => resolve())));
      assert.equal(lines.filter((l) => l.includes('discovery.entry_ignored') && l.includes('"instance":"a"')).length, before);
    } finally {
      await client.close();
    }
  });

  it('reports two live instances claiming one endpoint URL', async () => {
    const a = registry('a', 3001);
    registry('twin', 3001);
    const dup = await waitForEvent(a, 'duplicate', () => a.view().duplicates[0], 'duplicate report');
    assert.equal(dup.endpoint, 'http://127.0.0.1:3001');
    assert.deepEqual([...dup.ids].sort(), ['a', 'twin']);
    assert.ok(lines.some((l) => l.includes('discovery.duplicate_endpoint') && l.includes('"mine":true')));
    assert.equal(a.view().byEndpointHash.get(a.view().self!.endpointHash)?.id, 'a', 'self keeps its own endpoint');
  });

  it('serves alone and retries when the database is unreachable at start', async () => {
    const r = registry('lonely', 3001, { discoveryUrl: 'mongodb://127.0.0.1:1/nothing' });
    await once(r, 'outage');
    const v = r.view();
    assert.equal(v.self?.id, 'lonely');
    assert.equal(v.discoveryOk, false);
    assert.equal(lines.filter((l) => l.includes('discovery.unreachable')).length, 1);
  });

  it('keeps the last-known view through a database outage and heals after it', async () => {
    const outage = await outageControl(mongo(), url);
    const dbUrl = outage.url;
    const down = (): Promise<void> => outage.down();
    const up = (): Promise<void> => outage.up();
    const a = registry('a', 3001, { viewStaleMs: 2000, discoveryUrl: dbUrl });
    const b = registry('b', 3002, { viewStaleMs: 2000, discoveryUrl: dbUrl });
    try {
      await waitView(a, 'both', (v) => healthyIds(v).length === 2);
      const outageSeen = once(a, 'outage');
      await down();
      try {
        await outageSeen;
        const stale = await waitView(a, 'view flagged stale', (v) => v.stale, 20_000);
        assert.deepEqual(healthyIds(stale), ['a', 'b'], 'last-known members stay healthy during the outage');
        assert.equal(stale.discoveryOk, false);
      } finally {
        await up();
      }
      const healed = await waitView(a, 'healed', (v) => v.discoveryOk && !v.stale && healthyIds(v).length === 2, 30_000);
      assert.deepEqual(healthyIds(healed), ['a', 'b']);
      await waitView(b, 'b healed', (v) => v.discoveryOk);
      assert.equal(lines.filter((l) => l.includes('discovery.unreachable') && l.includes('"instance":"a"')).length, 1, 'one log line per outage');
      assert.ok(lines.some((l) => l.includes('discovery.recovered') && l.includes('"instance":"a"')));
    } finally {
      await outage.close();
    }
  });

  it('acts once on a signed drain request addressed to it, and ignores forged ones', async () => {
    const a = registry('a', 3001);
    await a.ready();
    const requests: string[] = [];
    a.on('drainRequested', (r) => requests.push(r.requestedBy));
    const client = await MongoClient.connect(url);
    try {
      const col = client.db().collection<Record<string, unknown>>('clusterEndpoints');
      const write = (value: unknown): Promise<unknown> => col.updateOne({ _id: 'a' as never }, { $set: { [DRAIN_FIELD]: value } });
      const twoPolls = (): Promise<void> => new Promise<void>((resolve) => a.once('view', () => a.once('view', () => resolve())));
      await write(makeDrainRequest('not-the-cluster-secret-000', 'a', { requestedBy: 'forger' }));
      await twoPolls();
      await write(makeDrainRequest(SECRET, 'someone-else', { requestedBy: 'misaddressed' }));
      await twoPolls();
      assert.deepEqual(requests, []);
      assert.ok(lines.some((l) => l.includes('command.ignored') && l.includes('bad signature')));
      assert.ok(lines.some((l) => l.includes('command.ignored') && l.includes('another instance')));
      const good = makeDrainRequest(SECRET, 'a', { requestedBy: 'ops@host' });
      await write(good);
      await waitForEvent(a, 'drainRequested', () => requests.length > 0 || undefined, 'drain request', 10_000);
      await write(good); // the same request again: a replay
      await twoPolls();
      assert.deepEqual(requests, ['ops@host']);
      const doc = await col.findOne({ _id: 'a' as never });
      assert.equal(doc?.[DRAIN_FIELD], undefined, 'the request is removed once read');
    } finally {
      await client.close();
    }
  });
});
