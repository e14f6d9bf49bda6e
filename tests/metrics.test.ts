import assert from 'node:assert/strict';
import { register as globalRegistry } from 'prom-client';
import { buildView, type MembershipView } from '../lib/discovery/view';
import type { EntryDoc } from '../lib/discovery/entry';
import { METRIC_NAMES, createMetrics } from '../lib/metrics';

function entry(id: string, o: Partial<EntryDoc> = {}): EntryDoc {
  return {
    _id: id, service: 'web', endpoint: `http://10.0.0.${id.length}:3000/${id}`, endpointHash: id, balancer: null, state: 'serving',
    appVersion: null, pkgVersion: '0.1.0', host: 'h', pid: 1, startedAt: new Date(1_700_000_000_000), heartbeatAt: new Date(),
    heartbeatMs: 1000, seq: 1, servingMs: 0, load: { sessions: 7, capacity: 100, elu: 0.25, delayMs: 12.5, cpu: 0.5, rss: 1e8 }, sig: null,
    ...o,
  } as EntryDoc;
}

function view(): MembershipView {
  return buildView({
    at: Date.now(), self: null, staleMs: 5000, discoveryOk: true, stale: false,
    observed: [
      { entry: entry('a'), ageMs: 100 },
      { entry: entry('b', { state: 'draining', load: { sessions: 3, capacity: 100, elu: 0, delayMs: 0, cpu: 0, rss: 0 } }), ageMs: 200 },
      { entry: entry('c'), ageMs: 9000 },
    ],
  });
}

const STATS = {
  requests: 10, upgrades: 4, served: 6, proxied: 5, pinned: 3, rejected: 1, hopsIn: 2, hopsOut: 5, retries: 1, proxyErrors: 2,
  untrustedHops: 1, byTransport: { xhr: 6, websocket: 4, info: 3 }, byReason: { 'proxy:least loaded': 4, 'serve:hop from a peer': 2, 'reject:no healthy member': 1, 'reject:service evil is not public': 9, 'bogus:page': 1 },
  sessionTable: 9, openProxiedSockets: 2,
};

const line = (text: string, re: string): void => assert.match(text, new RegExp(`^${re}$`, 'm'));

describe('metrics', () => {
  it('computes every metric at scrape time from stats() and view(), in a registry of its own', async () => {
    let scrapes = 0;
    const m = createMetrics({
      view, stats: () => (scrapes++, STATS), instanceId: 'i1', service: 'web', appVersion: '2.0', pkgVersion: '0.1.0',
    });
    assert.equal(scrapes, 0, 'nothing is read before a scrape');
    const text = await m.metrics();
    assert.equal(scrapes, 1, 'one stats() call per scrape, whatever the number of metrics');
    assert.equal(m.contentType, 'text/plain; version=0.0.4; charset=utf-8');
    line(text, 'ddp_cluster_info\\{instance="i1",service="web",app_version="2.0",version="0.1.0"\\} 1');
    line(text, 'ddp_cluster_member_sessions\\{member="a",service="web"\\} 7');
    line(text, 'ddp_cluster_member_sessions\\{member="b",service="web"\\} 3');
    line(text, 'ddp_cluster_member_healthy\\{member="c",service="web"\\} 0');
    line(text, 'ddp_cluster_member_event_loop_delay_seconds\\{member="a",service="web"\\} 0.0125');
    line(text, 'ddp_cluster_member_start_time_seconds\\{member="a",service="web"\\} 1700000000');
    line(text, 'ddp_cluster_members\\{state="serving",health="healthy"\\} 1');
    line(text, 'ddp_cluster_members\\{state="serving",health="unhealthy"\\} 1');
    line(text, 'ddp_cluster_members\\{state="draining",health="healthy"\\} 1');
    line(text, 'ddp_cluster_members\\{state="starting",health="healthy"\\} 0');
    line(text, 'ddp_cluster_routed_requests_total\\{transport="websocket"\\} 4');
    line(text, 'ddp_cluster_routing_decisions_total\\{action="proxy",reason="least loaded"\\} 4');
    line(text, 'ddp_cluster_routing_decisions_total\\{action="serve",reason="hop from a peer"\\} 2');
    line(text, 'ddp_cluster_routing_decisions_total\\{action="reject",reason="no healthy member"\\} 1');
    // Only the balancer's fixed reason codes become labels.
    assert.equal(text.match(/^ddp_cluster_routing_decisions_total\{/gm)?.length, 3);
    line(text, 'ddp_cluster_requests_total\\{kind="upgrade"\\} 4');
    line(text, 'ddp_cluster_proxy_errors_total 2');
    line(text, 'ddp_cluster_proxy_retries_total 1');
    line(text, 'ddp_cluster_untrusted_hops_total 1');
    line(text, 'ddp_cluster_hops_total\\{direction="in"\\} 2');
    line(text, 'ddp_cluster_hops_total\\{direction="out"\\} 5');
    line(text, 'ddp_cluster_discovery_up 1');
    // Neither health checks nor the discovery RTT in these stats: no samples, no fake zeros.
    assert.doesNotMatch(text, /^ddp_cluster_health_check_up\{/m);
    assert.doesNotMatch(text, /ddp_cluster_discovery_rtt_seconds/);
    for (const name of METRIC_NAMES) {
      if (name !== 'ddp_cluster_discovery_rtt_seconds') assert.match(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
    }
    assert.ok(!globalRegistry.getMetricsAsArray().some((x) => x.name.startsWith('ddp_cluster_')), 'the global registry stays clean');
  });

  it('reports health-check results and the discovery round trip when the core provides them', async () => {
    let stats: Record<string, unknown> = STATS;
    const m = createMetrics({ view, stats: () => stats, instanceId: 'i1', service: null, appVersion: null, pkgVersion: '0.1.0' });
    stats = {
      ...STATS, discoveryRttMs: 3.5,
      health: { a: { up: true, checkedAt: Date.now() - 400, rttMs: 2.1, reason: 'ok' }, c: { up: false, checkedAt: Date.now(), rttMs: null, reason: 'ECONNREFUSED' } },
    };
    const text = await m.metrics();
    line(text, 'ddp_cluster_health_check_up\\{member="a"\\} 1');
    line(text, 'ddp_cluster_health_check_up\\{member="c"\\} 0');
    line(text, 'ddp_cluster_health_check_rtt_seconds\\{member="a"\\} 0.0021');
    assert.doesNotMatch(text, /^ddp_cluster_health_check_rtt_seconds\{member="c"\}/m, 'no RTT for a failed check');
    assert.match(text, /^ddp_cluster_health_check_age_seconds\{member="a"\} 0\.4\d*$/m);
    line(text, 'ddp_cluster_discovery_rtt_seconds 0.0035');
    // Two instances (two attach() calls in one process) don't collide.
    const other = createMetrics({ view, stats: () => STATS, instanceId: 'i2', service: null, appVersion: null, pkgVersion: '0.1.0' });
    assert.match(await other.metrics(), /instance="i2"/);
  });
});
