/**
 * Lifecycle events on node:diagnostics_channel (lib/events.ts): an app subscribes by channel name
 * and sees routing decisions, proxy errors, peers going down and drains, each tagged with the
 * instance that published it.
 */
import assert from 'node:assert/strict';
import diagnosticsChannel from 'node:diagnostics_channel';
import { httpRequest, wsDdp, type WsDdpClient } from '../examples/node-ddp-app/clients';
import { dashboardPasswordFrom } from '../lib/dashboard/auth';
import { CHANNELS, type DrainEvent, type PeerEvent, type ProxyErrorEvent, type RouteEvent } from '../lib/events';
import { TEST_SECRET, startCluster, type Instance } from './support/cluster';
import { mongo, uniqueDbUrl } from './support/mongo';
import { eventually } from './support/wait';

describe('lifecycle events (diagnostics_channel)', function () {
  this.timeout(60_000);
  let cluster: Instance[] = [];
  const clients: WsDdpClient[] = [];
  const seen = { route: [] as RouteEvent[], proxyError: [] as ProxyErrorEvent[], peer: [] as PeerEvent[], drain: [] as DrainEvent[] };
  const listeners = {
    route: (m: unknown) => void seen.route.push(m as RouteEvent),
    proxyError: (m: unknown) => void seen.proxyError.push(m as ProxyErrorEvent),
    peer: (m: unknown) => void seen.peer.push(m as PeerEvent),
    drain: (m: unknown) => void seen.drain.push(m as DrainEvent),
  };

  before(() => {
    for (const name of Object.keys(listeners) as (keyof typeof listeners)[]) diagnosticsChannel.subscribe(CHANNELS[name], listeners[name]);
  });

  after(async () => {
    for (const name of Object.keys(listeners) as (keyof typeof listeners)[]) diagnosticsChannel.unsubscribe(CHANNELS[name], listeners[name]);
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await Promise.all(cluster.map((i) => i.close()));
  });

  it('publishes routing decisions, a proxy error with its retry, the peer going down, and a drain', async () => {
    const url = uniqueDbUrl(mongo().url, 'events');
    // a only proxies (while b can serve), and checks b rarely: the failed connect below is a's to see.
    cluster = await startCluster(['a', 'b'], url, (id) => ({ attach: id === 'a' ? { selfWeight: 0, healthIntervalMs: 3000 } : {} }));
    const [a, b] = cluster as [Instance, Instance];

    clients.push(await wsDdp(a.url));
    await eventually(() => seen.route.some((e) => e.instanceId === 'a' && e.exchange === 'upgrade' && e.action === 'proxy' && e.member === 'b'),
      'a routes the websocket to b');
    // b's registry entry says "serving", but nobody listens there any more.
    b.app.server.close();
    b.app.server.closeAllConnections();
    clients.push(await wsDdp(a.url));
    const error = seen.proxyError.find((e) => e.instanceId === 'a' && e.member === 'b');
    assert.ok(error, 'a proxy error from a to b');
    assert.equal(error.error, 'ECONNREFUSED');
    assert.equal(error.exchange, 'upgrade');
    assert.equal(error.verdict, 'other-member');
    assert.ok(seen.peer.some((e) => e.instanceId === 'a' && e.member === 'b' && !e.up), 'a saw b go down');
    const retried = seen.route.find((e) => e.instanceId === 'a' && e.retry === 1);
    assert.ok(retried, 'the retry is a new routing decision');
    assert.equal(retried.action, 'serve', 'with b down, a serves it itself');
    assert.ok(a.logs.some((l) => l.includes('"event":"balancer.proxy_error"')), 'the logger subscribes: the error is logged');
    const auth = `Basic ${Buffer.from(`x:${dashboardPasswordFrom(TEST_SECRET)}`).toString('base64')}`;
    const metrics = await httpRequest('GET', `${a.url}/cluster/metrics`, undefined, { headers: { authorization: auth } });
    assert.match(metrics.body, /^ddp_cluster_proxy_errors_by_kind_total\{kind="ECONNREFUSED"\} [1-9]/m, 'the metrics subscribe: errors by kind');

    await a.cluster.drain({ windowMs: 0 });
    const phases = seen.drain.filter((e) => e.instanceId === 'a').map((e) => e.phase);
    assert.equal(phases[0], 'start');
    assert.equal(phases.at(-1), 'done');
    assert.ok(phases.includes('batch'));
    assert.ok(a.logs.some((l) => l.includes('"event":"drain.done"')), 'drain lines are logged from the events');
  });
});
