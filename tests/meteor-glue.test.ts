/**
 * The Meteor glue (server/) booted the way Meteor boots it, in shimmed Meteor servers
 * (tests/support/meteor-shim.ts), one child process each, against the test run's real
 * MongoDB-compatible server.
 */
import assert from 'node:assert/strict';
import type { WhoamiResult } from '../examples/node-ddp-app/app';
import { httpRequest, sockjsDdp, type SockjsDdpClient } from '../examples/node-ddp-app/clients';
import { freePort, TEST_SECRET } from './support/cluster';
import {
  encodedConfigOfPage, runtimeConfigOfPage, spawnMeteor, type MeteorChild, type MemberSummary, type ShimApp,
} from './support/meteor-shim';
import { mongo, uniqueDbUrl } from './support/mongo';

interface Status {
  readonly config: Readonly<Record<string, unknown>>;
  readonly stats: { readonly sessions: number; readonly state: string };
  readonly members: readonly string[];
}

const serving = (ms: readonly MemberSummary[]): string[] => ms.filter((m) => m.healthy && m.state === 'serving').map((m) => m.id).sort();

describe('Meteor glue (shimmed Meteor servers, one process each, real discovery)', function () {
  this.timeout(120_000);
  let db: string;
  let children: MeteorChild[] = [];
  let clients: SockjsDdpClient[] = [];

  beforeEach(function () {
    db = uniqueDbUrl(mongo().url, (this.currentTest?.title ?? 'x').replace(/\W+/g, '_').slice(0, 24));
    children = [];
    clients = [];
  });

  afterEach(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await Promise.all(children.map((c) => c.kill()));
  });

  /** A shimmed Meteor server configured by the env API (discovery, service web, its own endpoint). */
  async function boot(id: string, env: Record<string, string> = {}, app: ShimApp = {}): Promise<MeteorChild> {
    const port = await freePort();
    const child = await spawnMeteor({
      id, port, app,
      env: {
        CLUSTER_DISCOVERY_URL: db, CLUSTER_SERVICE: 'web', CLUSTER_ENDPOINT_URL: `http://127.0.0.1:${port}`,
        CLUSTER_SECRET: TEST_SECRET, CLUSTER_STALE_HORIZON: '3s', ...env,
      },
    });
    children.push(child);
    return child;
  }

  const allServing = (cs: readonly MeteorChild[]): Promise<unknown> =>
    Promise.all(cs.map((c) => c.waitView(`sees ${cs.length} serving`, (ms) => serving(ms).join() === cs.map((x) => x.id).sort().join())));

  it('registers every instance, they see each other, and sockjs clients entering A get sessions across them', async () => {
    const cs = await Promise.all(['a', 'b', 'c'].map((id) => boot(id)));
    await allServing(cs);
    const [a] = cs as [MeteorChild];
    const served: string[] = [];
    for (let n = 0; n < 9; n++) {
      const client = await sockjsDdp(a.url, { transports: ['xhr-polling'] });
      clients.push(client);
      served.push(((await client.call('whoami')) as WhoamiResult).instanceId);
    }
    assert.ok(served.every((id) => ['a', 'b', 'c'].includes(id)), served.join());
    assert.ok(new Set(served).size >= 2, `sessions entering A were spread: ${served.join()}`);
    // sessionCount comes from Meteor.server.sessions: the instances count exactly those sessions.
    const statuses = await Promise.all(cs.map((c) => c.request<Status>({ cmd: 'status' })));
    assert.equal(statuses.reduce((sum, s) => sum + s.stats.sessions, 0), 9);
  });

  it('gives the same configuration through the env API and the JS API, and JS wins over env', async () => {
    const [dbEnv, dbJs] = [uniqueDbUrl(mongo().url, 'env_api'), uniqueDbUrl(mongo().url, 'js_api')];
    const endpoint = 'http://10.0.0.5:3000';
    const balancer = 'https://one.example.com';
    const byEnv = await boot('by-env', {
      CLUSTER_DISCOVERY_URL: dbEnv, CLUSTER_ENDPOINT_URL: endpoint, CLUSTER_BALANCER_URL: balancer,
      CLUSTER_UI_SERVICE: 'web', CLUSTER_SELF_WEIGHT: '0.5', CLUSTER_PUBLIC_SERVICES: 'search, admin',
    });
    const byJs = await boot('by-js', {
      // Overridden by the calls below; no discovery URL, endpoint or balancer in the environment.
      CLUSTER_DISCOVERY_URL: '', CLUSTER_ENDPOINT_URL: '', CLUSTER_SERVICE: 'envsvc', CLUSTER_SELF_WEIGHT: '1',
    }, {
      calls: [['connect', dbJs, { selfWeight: 0.5 }], ['register', 'web', { endpoint, balancer, uiService: 'web' }], ['allowPublicAccess', ['search']]],
      // Made in the app's own Meteor.startup callback: still before the cluster attaches.
      startupCalls: [['allowPublicAccess', ['admin']]],
    });
    const [e, j] = await Promise.all([byEnv, byJs].map((c) => c.request<Status>({ cmd: 'status' }))) as [Status, Status];
    const { instanceId: _i1, discoveryUrl: envUrl, ...envConfig } = e.config;
    const { instanceId: _i2, discoveryUrl: jsUrl, ...jsConfig } = j.config;
    assert.deepEqual(jsConfig, envConfig);
    assert.equal(envConfig.service, 'web');
    assert.equal(envConfig.selfWeight, 0.5);
    assert.deepEqual(envConfig.publicServices, ['search', 'admin']);
    assert.deepEqual([envUrl, jsUrl], [dbEnv, dbJs]);
  });

  it('fails the boot with errors that name the fix: register twice, connect twice, unknown scheme, bad option, late call', async () => {
    const endpoint = 'http://127.0.0.1:9';
    const boots: [ShimApp, RegExp][] = [
      [{ calls: [['connect', db], ['register', 'web', { endpoint }], ['register', 'web', { endpoint }]] },
        /Cluster\.register\(\) was called twice: this instance is already registered as "web".*CLUSTER_SERVICE/],
      [{ calls: [['connect', db], ['connect', db]] }, /Cluster\.connect\(\) was called twice.*CLUSTER_DISCOVERY_URL/],
      [{ calls: [['connect', 'redis://127.0.0.1:6379']] }, /unknown discovery scheme "redis:".*mongodb:\/\/host:27017\/db/],
      [{ calls: [['connect', db, { selfWeight: 2 }]] }, /options\.selfWeight \(CLUSTER_SELF_WEIGHT\)="2" is invalid: use a number from 0/],
    ];
    await Promise.all(boots.map(async ([app, error], n) => {
      const port = await freePort();
      await assert.rejects(spawnMeteor({ id: `bad${n}`, port, app }), error);
    }));
    const late = await boot('late');
    await assert.rejects(late.request({ cmd: 'api', call: ['register', 'web'] }), /Cluster\.register\(\) was called after Meteor started/);
  });

  it('without CLUSTER_ENDPOINT_URL, logs what it assumes and does not register (never falls back to ROOT_URL)', async () => {
    const a = await boot('a');
    const x = await boot('x', { CLUSTER_ENDPOINT_URL: '', ROOT_URL: 'http://public.example.com' });
    const line = await x.waitLine(/"event":"cluster\.no_endpoint"/);
    assert.match(line, /CLUSTER_ENDPOINT_URL is not: this instance balances but does not register/);
    assert.match(line, /set CLUSTER_ENDPOINT_URL to the URL peers use to reach this instance/);
    // Once x has polled (it sees a), its own entry would be there had it registered.
    await x.waitView('sees a', (ms) => ms.some((m) => m.id === 'a'));
    const status = await x.request<Status>({ cmd: 'status' });
    assert.equal(status.config.endpointUrl, null);
    assert.deepEqual(status.members, ['a']);
    assert.ok(!a.view.some((m) => m.id === 'x'));
  });

  it('pins DDP_DEFAULT_CONNECTION_URL to balancer URLs when enabled, and leaves the config intact otherwise', async () => {
    const ports = await Promise.all([0, 1, 2].map(() => freePort()));
    const own = (i: number): string => `http://127.0.0.1:${ports[i] as number}`;
    const mobile = 'https://mobile.example.com';
    const boots = [
      ['a', { CLUSTER_PIN_DDP_URL: '1', CLUSTER_BALANCER_URL: own(0), MOBILE_DDP_URL: mobile }],
      ['b', { CLUSTER_BALANCER_URL: own(1) }],
      ['c', {}],
    ] as const;
    const cs = await Promise.all(boots.map(async ([id, env], i) => {
      const child = await spawnMeteor({
        id, port: ports[i] as number,
        env: { CLUSTER_DISCOVERY_URL: db, CLUSTER_SERVICE: 'web', CLUSTER_ENDPOINT_URL: own(i), CLUSTER_SECRET: TEST_SECRET, ...env },
      });
      children.push(child);
      return child;
    }));
    await allServing(cs);
    const [a, b, c] = cs as [MeteorChild, MeteorChild, MeteorChild];
    const generated = (child: MeteorChild, arch: string): Promise<string> => child.request<string>({ cmd: 'generated-config', arch });
    const page = async (child: MeteorChild, path = '/'): Promise<string> => (await httpRequest('GET', child.url + path)).body;

    const baseline = await generated(a, 'web.browser');
    const base = JSON.parse(decodeURIComponent(JSON.parse(baseline) as string)) as Record<string, unknown>;
    const seen: Record<string, number> = {};
    for (let n = 0; n < 40; n++) {
      const html = await page(a);
      const config = runtimeConfigOfPage(html);
      const url = config.DDP_DEFAULT_CONNECTION_URL;
      if (url === undefined) {
        // c (no balancer URL) was picked: nothing to pin, and no trace of earlier pins.
        assert.equal(encodedConfigOfPage(html), baseline);
      } else {
        // The picked member's pinned path on its own balancer URL, so that balancer serves the session.
        assert.ok([own(0), own(1)].some((o) => new RegExp(`^${o}/cluster-ddp/[0-9a-f]{20}/web$`).test(String(url))), String(url));
        const { DDP_DEFAULT_CONNECTION_URL: _u, DDP_CLUSTER_FALLBACK_URL: fallback, ...rest } = config;
        assert.equal(fallback, '/');
        assert.deepEqual(rest, base);
      }
      const key = url === undefined ? 'unpinned' : new URL(String(url)).origin;
      seen[key] = (seen[key] ?? 0) + 1;
    }
    assert.ok((seen[own(0)] ?? 0) > 0 && (seen[own(1)] ?? 0) > 0 && (seen.unpinned ?? 0) > 0, JSON.stringify(seen));
    // Cordova keeps the operator's MOBILE_DDP_URL.
    const cordova = await page(a, '/__cordova/index.html');
    assert.equal(encodedConfigOfPage(cordova), await generated(a, 'web.cordova'));
    assert.equal(runtimeConfigOfPage(cordova).DDP_DEFAULT_CONNECTION_URL, mobile);
    // Pinning off: byte for byte what webapp generated, every time.
    for (const child of [b, c]) {
      for (let n = 0; n < 3; n++) assert.equal(encodedConfigOfPage(await page(child)), await generated(child, 'web.browser'));
    }
  });

  it('on SIGTERM drains and deregisters; the app\'s own handler still runs, or the signal is re-raised', async () => {
    const cs = await Promise.all([
      boot('a'), boot('b'), boot('with-handler', {}, { sigtermHandler: true }), boot('alone'),
      // Started by `meteor run` (the tool sets METEOR_PARENT_PID), which restarts it on every change.
      boot('dev', { METEOR_PARENT_PID: String(process.pid) }),
    ]);
    await allServing(cs);
    const [a, , withHandler, alone, dev] = cs as [MeteorChild, MeteorChild, MeteorChild, MeteorChild, MeteorChild];

    const leftOrDraining = (id: string) => (ms: readonly MemberSummary[]): boolean => !ms.some((m) => m.id === id && m.state !== 'draining');
    const handled = withHandler.kill('SIGTERM');
    await a.waitView('with-handler draining or gone', leftOrDraining('with-handler'));
    assert.deepEqual(await handled, { code: 0, signal: null }, 'the app\'s handler decided the exit');
    assert.ok(withHandler.lines.includes('app: SIGTERM handler ran'));
    assert.ok(withHandler.lines.some((l) => /"event":"drain\.start"/.test(l)));

    const exit = await alone.kill('SIGTERM');
    assert.deepEqual(exit, { code: null, signal: 'SIGTERM' }, 'no other SIGTERM listener: default action after deregistering');
    assert.ok(alone.lines.some((l) => /"event":"drain\.done"/.test(l)));

    // Under the meteor tool: deregister and go, no paced drain.
    assert.deepEqual(await dev.kill('SIGTERM'), { code: null, signal: 'SIGTERM' });
    assert.ok(!dev.lines.some((l) => /"event":"drain\./.test(l)));
    await a.waitView('dev gone', (ms) => !ms.some((m) => m.id === 'dev'));
    await a.waitView('alone gone', (ms) => !ms.some((m) => m.id === 'alone'));
  });

  it('keeps a discovered connection on a live member of the service, moving it when its member is killed', async () => {
    const web = await Promise.all([boot('web-1'), boot('web-2')]);
    // The worker asks for the connection while loading, before the cluster is attached.
    const worker = await boot('worker', { CLUSTER_SERVICE: 'worker' }, { discover: ['web'] });
    await allServing([...web, worker]);
    const first = ((await worker.request<WhoamiResult>({ cmd: 'call', connection: 0, method: 'whoami' })).instanceId);
    assert.ok(first === 'web-1' || first === 'web-2', first);
    const victim = web.find((w) => w.id === first) as MeteorChild;
    await victim.kill('SIGKILL');
    const second = (await worker.request<WhoamiResult>({ cmd: 'call', connection: 0, method: 'whoami' })).instanceId;
    assert.equal(second, first === 'web-1' ? 'web-2' : 'web-1');
  });
});
