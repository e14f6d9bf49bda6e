/**
 * Real Meteor: examples/meteor-app (the Atmosphere path, METEOR_PACKAGE_DIRS with a link to this
 * checkout) and examples/meteor-npm-app (the npm path, `ddp-cluster/server` from an `npm pack`
 * tarball) built with `meteor build --server-only`, their bundles started with `node main.js` on the
 * run's FerretDB, driven by headless Chromium pages (Meteor's own client) and Node DDP clients.
 * Plus `meteor run` of the example. The meteor tool: tests/support/meteor-real.ts.
 *
 * Each cluster has a front door, `web-0`, with no CLUSTER_ENDPOINT_URL: it serves pages and balances
 * but does not register, so it passes every DDP session on, like a front load balancer would. Its
 * pages' sessions land on the members, so killing one of those is survivable for the page (a page
 * whose own origin dies has nowhere to reconnect to, clustered or not).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { endpointHash } from '../lib/index';
import { TEST_SECRET } from './support/cluster';
import { httpRequest, rawXhrDdp, wsDdp, type WsDdpClient } from '../examples/node-ddp-app/clients';
import {
  buildApp, killAll, linkedPackageDirs, meteorRun, meteorTool, packTarball, startBundleOnFreePort,
  type BuiltApp, type MeteorProcess,
} from './support/meteor-real';
import { freePort, mongo, uniqueDbUrl } from './support/mongo';
import { eventually } from './support/wait';

const CHROMIUM = '/usr/bin/chromium';
const PASSWORD = 'real-meteor-dashboard-password';
const CLIENT_IP = '127.0.0.2';

interface Whoami { readonly instance: string; readonly clientAddress: string | null; readonly session: string }
interface ApiMember { readonly id: string; readonly service: string; readonly state: string; readonly healthy: boolean; readonly sessions: number }

const figures: Record<string, unknown> = {};
const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

/** The member's dashboard API snapshot: the members it sees and its own stats. */
interface ApiStats { readonly sockjsEntry?: string; readonly pollingHop?: string; readonly translatedSessions?: number; readonly carriedSessions?: number; readonly lostRelayedPolls?: number }
async function apiCluster(p: MeteorProcess): Promise<{ members: ApiMember[]; stats: ApiStats }> {
  const res = await fetch(`${p.url}/cluster/api/cluster`, {
    headers: { authorization: `Basic ${Buffer.from(`test:${PASSWORD}`).toString('base64')}` },
    signal: AbortSignal.timeout(5000),
  });
  if (res.status !== 200) throw new Error(`${p.id} /cluster/api/cluster answered ${res.status}`);
  return (await res.json()) as { members: ApiMember[]; stats: ApiStats };
}

const apiMembers = async (p: MeteorProcess): Promise<ApiMember[]> => (await apiCluster(p)).members;

/** Waits until every process sees exactly `ids` healthy and serving. */
async function waitServing(procs: readonly MeteorProcess[], ids: readonly string[]): Promise<void> {
  const want = [...ids].sort().join();
  await Promise.all(procs.map((p) => eventually(async () => {
    const serving = (await apiMembers(p)).filter((m) => m.healthy && m.state === 'serving').map((m) => m.id).sort().join();
    return serving === want;
  }, `${p.id} to see ${want} serving`, 60_000, 200)));
}

interface Cluster {
  readonly db: string;
  readonly procs: Map<string, MeteorProcess>;
  get(id: string): MeteorProcess;
}

/** web-0 (front door, not registered) and web-1..n of examples/meteor-app, in one discovery database. */
async function startWeb(app: BuiltApp, name: string, n: number, env: (port: number) => Record<string, string> = () => ({})): Promise<Cluster> {
  const db = uniqueDbUrl(mongo().url, `m_${name}`);
  const ids = Array.from({ length: n + 1 }, (_, i) => `web-${i}`);
  const procs = new Map<string, MeteorProcess>();
  await Promise.all(ids.map(async (id) => {
    procs.set(id, await startBundleOnFreePort(app, id, (port) => {
      const member = memberEnv(db, name, port);
      if (id === 'web-0') delete member.CLUSTER_ENDPOINT_URL;
      return { ...member, ...env(port) };
    }));
  }));
  await waitServing([...procs.values()], ids.slice(1));
  return { db, procs, get: (id) => procs.get(id) ?? assert.fail(`no ${id}`) };
}

function memberEnv(db: string, name: string, port: number): Record<string, string> {
  return {
    MONGO_URL: uniqueDbUrl(mongo().url, `m_${name}_app`),
    CLUSTER_DISCOVERY_URL: db,
    CLUSTER_SECRET: TEST_SECRET,
    CLUSTER_ENDPOINT_URL: `http://127.0.0.1:${port}`,
    CLUSTER_DASHBOARD_PASSWORD: PASSWORD,
    CLUSTER_STALE_HORIZON: '3s',
    CLUSTER_DRAIN_WINDOW: '2s',
  };
}

/** A Chromium page of the app, its errors (uncaught exceptions, failed loads) collected. */
interface AppPage { readonly page: Page; readonly errors: string[]; readonly origin: string }

async function openPage(context: BrowserContext, url: string): Promise<AppPage> {
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/favicon/.test(m.location().url)) errors.push(`console: ${m.text()}`); });
  page.on('response', (r) => { if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) errors.push(`HTTP ${r.status()} ${r.url()}`); });
  await page.goto(url);
  await page.waitForFunction(() => (globalThis as any).Package?.meteor?.Meteor?.status().connected === true, null, { timeout: 30_000 });
  // Every status change of the default connection, with the page's clock (the same machine's).
  await page.evaluate(() => {
    const g = globalThis as any;
    g.statusLog = [];
    g.Package.tracker.Tracker.autorun(() => {
      const s = g.Package.meteor.Meteor.status();
      g.statusLog.push({ t: Date.now(), status: s.status, retryCount: s.retryCount, retryTime: s.retryTime ?? null });
    });
  });
  return { page, errors, origin: url };
}

function whoami(p: AppPage, timeoutMs = 20_000): Promise<Whoami> {
  return p.page.evaluate((ms) => Promise.race([
    (globalThis as any).Package.meteor.Meteor.callAsync('whoami'),
    new Promise((_, reject) => setTimeout(() => reject(new Error('whoami timed out')), ms)),
  ]), timeoutMs) as Promise<Whoami>;
}

/** The id that occurs most often (the first of equals). */
function busiest(ids: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const id of ids) counts.set(id, (counts.get(id) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? assert.fail('no ids');
}

/** The `whoami` publication's document as the page shows it. */
async function publishedInstance(p: AppPage, instance: string): Promise<void> {
  await p.page.waitForFunction((id) => ((globalThis as any).document.getElementById('publication')?.textContent ?? '').includes(`"${id}"`), instance, { timeout: 20_000 });
}

/** The SockJS transport of the page's DDP connection ('websocket', 'xhr-polling', ...). */
function transportOf(p: AppPage): Promise<string> {
  return p.page.evaluate(() => String((globalThis as any).Package.meteor.Meteor.connection._stream.socket?.transport ?? 'none'));
}

/** Milliseconds from `since` to the page's first reconnection after it (from its status log). */
async function reconnectedAfter(p: AppPage, since: number): Promise<{ ms: number; waitedForBackoff: boolean; log: string }> {
  const log = await p.page.evaluate(() => (globalThis as any).statusLog as { t: number; status: string; retryCount: number; retryTime: number | null }[]);
  const after = log.filter((e) => e.t >= since);
  const back = after.find((e) => e.status === 'connected');
  if (!back) throw new Error(`no reconnection in the page's status log: ${JSON.stringify(after)}`);
  // Meteor's back-off (packages/retry): after two immediate retries it waits >= 3.6 s. Did the page sit that out?
  const backoff = after.find((e) => e.status === 'waiting' && e.retryTime !== null && e.retryTime - e.t > 1000);
  return {
    ms: back.t - since,
    waitedForBackoff: backoff !== undefined && backoff.retryTime !== null && back.t >= backoff.retryTime,
    log: after.map((e) => `+${e.t - since}ms ${e.status}/${e.retryCount}${e.retryTime === null ? '' : ` retry at +${e.retryTime - since}ms`}`).join(', '),
  };
}

describe('Real Meteor: examples built with meteor build, bundles run with node main.js', function () {
  this.timeout(180_000);
  let web: BuiltApp;
  let search: BuiltApp;
  let browser: Browser;
  let packageDirs: string;

  before(async function () {
    this.timeout(40 * 60_000);
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium (.ci/run does it)`);
    const tool = await meteorTool();
    figures.meteor = `${tool.bin} (${tool.source})`;
    const tarball = await packTarball();
    packageDirs = linkedPackageDirs();
    web = await buildApp('meteor-app', { packageDirs });
    search = await buildApp('meteor-npm-app', { tarball });
    figures.buildSeconds = { 'meteor-app': Math.round(web.buildMs / 1000), 'meteor-npm-app': Math.round(search.buildMs / 1000) };
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  });

  after(async () => {
    process.stdout.write(`      figures: ${JSON.stringify(figures)}\n`);
    await browser?.close().catch(() => undefined);
    await killAll();
  });

  it('puts nothing Meteor writes into the linked checkout under version control', () => {
    // `meteor build` with the checkout linked from METEOR_PACKAGE_DIRS wrote .npm/package/ into it.
    assert.ok(fs.existsSync(path.join(packageDirs, 'ddp-cluster', '.npm', 'package')), 'Meteor wrote .npm/package into the checkout');
    const ignored = fs.readFileSync(path.join(packageDirs, 'ddp-cluster', '.gitignore'), 'utf8').split('\n');
    assert.ok(ignored.includes('.npm/'), '.gitignore covers .npm/');
  });

  describe('websocket: front door web-0, web-1..3 (Atmosphere path) and search-1 (npm path)', () => {
    let cluster: Cluster;
    let searchProc: MeteorProcess;
    let context: BrowserContext;
    const clients: WsDdpClient[] = [];
    const frontPages: AppPage[] = [];
    /** The members alive after the kill -9 test. */
    const survivors: string[] = [];

    before(async function () {
      this.timeout(180_000);
      cluster = await startWeb(web, 'ws', 3);
      searchProc = await startBundleOnFreePort(search, 'search-1', (port) => memberEnv(cluster.db, 'ws', port));
      await waitServing([searchProc, cluster.get('web-0')], ['web-1', 'web-2', 'web-3', 'search-1']);
      context = await browser.newContext();
    });

    after(async () => {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await context?.close().catch(() => undefined);
    });

    it('loads pages from every instance without errors, and their sessions spread over web-1..3', async () => {
      const pages: AppPage[] = [];
      for (const id of ['web-0', 'web-0', 'web-0', 'web-0', 'web-0', 'web-0', 'web-1', 'web-2', 'web-3']) {
        pages.push(await openPage(context, cluster.get(id).url));
      }
      frontPages.push(...pages.slice(0, 6));
      const served = await Promise.all(pages.map((p) => whoami(p)));
      await Promise.all(pages.map((p, i) => publishedInstance(p, (served[i] as Whoami).instance)));
      assert.deepEqual(pages.flatMap((p) => p.errors), [], 'no page errors');
      assert.deepEqual(await Promise.all(pages.map(transportOf)), pages.map(() => 'websocket'));
      const by = served.map((w) => w.instance);
      figures.wsPagesByInstance = by;
      assert.ok(!by.includes('web-0'), 'the front door (not registered) serves no session');
      assert.deepEqual([...new Set(by)].sort(), ['web-1', 'web-2', 'web-3'], `sessions on every member: ${by.join()}`);
      assert.ok(served.every((w) => w.clientAddress === '127.0.0.1'), `clientAddress: ${served.map((w) => w.clientAddress).join()}`);
    });

    it('answers methods and subscriptions with the client\'s own clientAddress, served here or through a hop', async () => {
      const members = ['web-1', 'web-2', 'web-3'].map((id) => cluster.get(id));
      const seen: string[] = [];
      for (const entry of [cluster.get('web-0'), ...members]) {
        // The plain /websocket of each instance, and each member's pinned path through this one (a forced hop).
        const urls = [entry.url, ...members.filter((m) => m !== entry).map((m) => `${entry.url}/cluster-ddp/${endpointHash(m.url)}/web`)];
        for (const url of urls) {
          const c = await wsDdp(url, { localAddress: CLIENT_IP });
          clients.push(c);
          const w = (await c.call('whoami')) as Whoami;
          const [doc] = await c.subscribe('whoami');
          assert.equal(w.clientAddress, CLIENT_IP, `clientAddress via ${url} (served by ${w.instance})`);
          assert.equal(doc?.fields.instance, w.instance, 'the publication runs where the method does');
          if (url.includes('/cluster-ddp/')) assert.ok(url.includes(endpointHash(cluster.get(w.instance).url)), `${url} is served by the pinned member`);
          seen.push(w.instance);
        }
      }
      assert.deepEqual([...new Set(seen)].sort(), ['web-1', 'web-2', 'web-3']);
    });

    it('reaches the search service (npm path) with Cluster.discoverConnection, and Cluster.on/status work', async () => {
      const c = await wsDdp(cluster.get('web-1').url);
      clients.push(c);
      const s = await eventually(() => c.call('searchWhoami').catch(() => undefined) as Promise<{ service: string; instance: string } | undefined>,
        'searchWhoami to reach search-1', 30_000, 250);
      assert.deepEqual([s.service, s.instance], ['search', 'search-1']);
      const log = cluster.get('web-1');
      await log.waitForLine(/^cluster: search-1 joined at http:\/\/127\.0\.0\.1:\d+$/, 'Cluster.on(\'join\') for search-1');
      await log.waitForLine(/^cluster: web-1 is "web" on http:\/\/127\.0\.0\.1:\d+$/, 'Cluster.status() at onListening');
    });

    it('serves the npm-path app\'s pages, whose client imports ddp-cluster/client', async () => {
      const p = await openPage(context, searchProc.url);
      await p.page.waitForFunction(() => ((globalThis as any).document.getElementById('method')?.textContent ?? '').includes('search-1'), null, { timeout: 20_000 });
      assert.equal(await p.page.evaluate(() => typeof (globalThis as any).ddpClusterClient?.discoverConnection), 'function');
      assert.deepEqual(p.errors, []);
      await p.page.close();
    });

    it('shows every member on the dashboard after a login', async () => {
      const page = await context.newPage();
      await page.goto(`${cluster.get('web-1').url}/cluster/`);
      await page.getByLabel('Password').fill(PASSWORD);
      await page.getByRole('button', { name: 'Log in' }).click();
      for (const id of ['web-1', 'web-2', 'web-3', 'search-1']) await page.locator('#rows tr', { hasText: id }).first().waitFor();
      await page.close();
    });

    it('kill -9 of a member: its pages reconnect to a survivor, the others keep their session', async () => {
      const before = await Promise.all(frontPages.map((p) => whoami(p)));
      // The member with the most front-door pages (how 6 pages spread over 3 members varies).
      const victimId = busiest(before.map((w) => w.instance));
      survivors.push(...['web-1', 'web-2', 'web-3'].filter((id) => id !== victimId));
      const hit = frontPages.filter((_, i) => before[i]?.instance === victimId);
      assert.ok(hit.length > 0, `some front-door pages are on ${victimId}: ${before.map((w) => w.instance).join()}`);
      const killedAt = Date.now();
      await cluster.get(victimId).kill('SIGKILL');
      const after = await Promise.all(frontPages.map((p) => eventually(async () => {
        const w = await whoami(p, 5000);
        return w.instance !== victimId && w;
      }, 'the page to be served by a survivor', 30_000, 100)));
      const times = await Promise.all(hit.map(async (p) => (await reconnectedAfter(p, killedAt)).ms));
      figures.wsKillReconnectMs = { median: median(times), max: Math.max(...times), pages: times.length };
      frontPages.forEach((p, i) => {
        const [b, a] = [before[i] as Whoami, after[i] as Whoami];
        if (b.instance === victimId) assert.notEqual(a.instance, victimId);
        else assert.equal(a.session, b.session, `a page on ${b.instance} kept its session`);
      });
    });

    it('SIGTERM: the member drains its pages to the survivors, deregisters and exits', async () => {
      // Of the two members left after the kill, the one with more front-door pages drains to the other.
      const before = await Promise.all(frontPages.map((p) => whoami(p)));
      const victimId = busiest(before.map((w) => w.instance));
      const last = survivors.find((id) => id !== victimId) ?? assert.fail(`survivors ${survivors.join()} after the kill`);
      const victim = cluster.get(victimId);
      const hit = frontPages.filter((_, i) => before[i]?.instance === victimId);
      assert.ok(hit.length > 0, `some front-door pages are on ${victimId}: ${before.map((w) => w.instance).join()}`);
      const at = Date.now();
      victim.proc.kill('SIGTERM');
      const exit = await victim.exited;
      figures.sigtermExit = { ...exit, ms: Date.now() - at };
      assert.ok(exit.signal === 'SIGTERM' || exit.code === 143, `exits as a SIGTERM'd process: ${JSON.stringify(exit)}`);
      const after = await Promise.all(frontPages.map((p) => eventually(async () => {
        const w = await whoami(p, 5000);
        return w.instance === last && w;
      }, `the page to be served by ${last}`, 30_000, 100)));
      assert.equal(after.length, frontPages.length);
      // Deregistered: gone from the registry, so from the last member's view at its next poll (a kill -9'd member stays, unhealthy, until cleanup).
      await eventually(async () => !(await apiMembers(cluster.get(last))).some((m) => m.id === victimId), `${victimId} to leave ${last}'s view`, 20_000, 200);
      assert.ok(victim.logs.some((l) => /"event":"drain\./.test(l.line)), `${victimId} logged its drain:\n${victim.tail()}`);
    });
  });

  describe('xhr-polling: DISABLE_WEBSOCKETS=1 and HTTP_FORWARDED_COUNT=1', () => {
    let cluster: Cluster;
    let context: BrowserContext;

    before(async function () {
      this.timeout(180_000);
      cluster = await startWeb(web, 'xhr', 2, () => ({ DISABLE_WEBSOCKETS: '1', HTTP_FORWARDED_COUNT: '1' }));
      // A polling-only search member: web's server-side discoverConnection can't use it (websocket only).
      await startBundleOnFreePort(search, 'search-2', (port) => ({ ...memberEnv(cluster.db, 'xhr', port), DISABLE_WEBSOCKETS: '1' }));
      // Pages behind a proxy that says who the client is.
      context = await browser.newContext({ extraHTTPHeaders: { 'x-forwarded-for': '198.51.100.7' } });
    });

    after(async () => {
      await context?.close().catch(() => undefined);
    });

    it('hands what it serves straight to sockjs, past ddp-server\'s per-request wrapper (Meteor\'s listeners have the expected shape)', async () => {
      for (const id of ['web-1', 'web-2']) assert.equal((await apiCluster(cluster.get(id))).stats.sockjsEntry, 'direct', id);
    });

    it('carries a polling session entering web-1 to web-2 over one websocket (translated), with the forwarded address', async () => {
      const [entry, member] = [cluster.get('web-1'), cluster.get('web-2')];
      assert.equal((await apiCluster(entry)).stats.pollingHop, 'translate');
      const opts = { headers: { 'x-forwarded-for': '203.0.113.9' }, localAddress: CLIENT_IP };
      const base = `${entry.url}/cluster-ddp/${endpointHash(member.url)}.${endpointHash(entry.url)}/web`;
      const s = await rawXhrDdp(() => base, opts);
      const w = (await s.call('whoami')) as Whoami;
      assert.deepEqual([w.instance, w.clientAddress], ['web-2', '203.0.113.9']);
      assert.equal(((await s.call('whoami')) as Whoami).session, w.session);
      assert.equal((await apiCluster(entry)).stats.translatedSessions, 1, 'web-1 carries it');
      assert.equal((await apiCluster(member)).stats.carriedSessions, 1, 'web-2 holds it as a carried session');
    });

    it('runs pages over xhr-polling on every member, with the forwarded client address, and survives kill -9', async () => {
      const pages: AppPage[] = [];
      for (let i = 0; i < 6; i++) pages.push(await openPage(context, cluster.get('web-0').url));
      const before = await Promise.all(pages.map((p) => whoami(p)));
      await Promise.all(pages.map((p, i) => publishedInstance(p, (before[i] as Whoami).instance)));
      assert.deepEqual(pages.flatMap((p) => p.errors), []);
      assert.deepEqual([...new Set(await Promise.all(pages.map(transportOf)))], ['xhr-polling']);
      assert.deepEqual([...new Set(before.map((w) => w.instance))].sort(), ['web-1', 'web-2'], `spread: ${before.map((w) => w.instance).join()}`);
      assert.deepEqual([...new Set(before.map((w) => w.clientAddress))], ['198.51.100.7']);

      const killedAt = Date.now();
      await cluster.get('web-2').kill('SIGKILL');
      const after = await Promise.all(pages.map((p) => eventually(async () => {
        const w = await whoami(p, 5000);
        return w.instance === 'web-1' && w;
      }, 'the page to be served by web-1', 40_000, 100)));
      const times = await Promise.all(pages.filter((_, i) => before[i]?.instance === 'web-2').map(async (p) => (await reconnectedAfter(p, killedAt)).ms));
      figures.xhrKillReconnectMs = { median: median(times), max: Math.max(...times), pages: times.length };
      pages.forEach((_, i) => {
        if (before[i]?.instance === 'web-1') assert.equal(after[i]?.session, before[i]?.session, 'pages on web-1 kept their session');
      });
    });

    it('gives raw xhr clients their forwarded address, served here or through a hop', async () => {
      const front = cluster.get('web-0');
      const member = cluster.get('web-1');
      const opts = { headers: { 'x-forwarded-for': '203.0.113.9' }, localAddress: CLIENT_IP };
      for (const base of [`${member.url}/sockjs`, `${front.url}/cluster-ddp/${endpointHash(member.url)}/web`]) {
        const s = await rawXhrDdp(() => base, opts);
        const w = (await s.call('whoami')) as Whoami;
        assert.deepEqual([w.instance, w.clientAddress], ['web-1', '203.0.113.9'], `via ${base}`);
      }
    });

    it('says why a server-side discoverConnection can\'t reach a polling-only service, with the fix', async () => {
      const line = await cluster.get('web-1').waitForLine(/"event":"discover\.websocket_disabled"/, 'the discover.websocket_disabled error', 60_000);
      assert.match(line, /"service":"search"/);
      assert.match(line, /unset DISABLE_WEBSOCKETS/);
    });
  });

  describe('polling behind a plain round-robin TCP front: DISABLE_WEBSOCKETS=1, every request of a session at any of three balancers', () => {
    let cluster: Cluster;
    // One context per page: a browser keeps at most 6 connections per host, and every polling page
    // holds one in a long poll.
    const contexts: BrowserContext[] = [];
    let front: net.Server;
    const sockets = new Set<net.Socket>();

    before(async function () {
      this.timeout(180_000);
      cluster = await startWeb(web, 'rr', 3, () => ({ DISABLE_WEBSOCKETS: '1' }));
      // What README's "point DNS or any plain load balancer at any of them" means: each connection
      // to the next instance in turn, so a session's polls keep reaching all three balancers.
      const targets = ['web-1', 'web-2', 'web-3'].map((id) => Number(new URL(cluster.get(id).url).port));
      let next = 0;
      front = net.createServer((client) => {
        const upstream = net.connect(targets[next++ % targets.length] as number, '127.0.0.1');
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('error', () => undefined);
          s.on('close', () => {
            sockets.delete(s);
            client.destroy();
            upstream.destroy();
          });
        }
        client.pipe(upstream).pipe(client);
      });
      await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
    });

    after(async () => {
      await Promise.all(contexts.map((c) => c.close().catch(() => undefined)));
      front?.close();
      for (const s of sockets) s.destroy();
    });

    // The loss itself (an answer written to a relay that then died) is a race this test doesn't
    // force: tests/relayed.test.ts does, on real sockets. Here real pages must keep calling through
    // the kill; a page left with a hole stops, its call never answered.
    it('kill -9 of a member that also relays the others\' polls: every page keeps calling methods, none waits forever', async () => {
      const url = `http://127.0.0.1:${(front.address() as net.AddressInfo).port}`;
      const pages: AppPage[] = [];
      const t0 = Date.now();
      for (let i = 0; i < 8; i++) {
        const context = await browser.newContext();
        contexts.push(context);
        pages.push(await openPage(context, url));
      }
      figures.rrPagesOpenMs = Date.now() - t0;
      const before = await Promise.all(pages.map((p) => whoami(p)));
      assert.deepEqual([...new Set(await Promise.all(pages.map(transportOf)))], ['xhr-polling']);
      // Every page calls a method again and again, so answers are in flight through every balancer
      // when web-3 dies.
      await Promise.all(pages.map((p) => p.page.evaluate(() => {
        const g = globalThis as any;
        g.calls = 0;
        void (async () => {
          while (g.stopCalls !== true) {
            try {
              await g.Package.meteor.Meteor.callAsync('whoami');
              g.calls++;
            } catch {
              g.callErrors = (g.callErrors ?? 0) + 1;
            }
          }
        })();
      })));
      const calls = (): Promise<number[]> => Promise.all(pages.map((p) => p.page.evaluate(() => (globalThis as any).calls as number)));
      await eventually(async () => (await calls()).every((n) => n >= 5), 'every page calling');
      const atKill = await calls();
      const killedAt = Date.now();
      await cluster.get('web-3').kill('SIGKILL');
      // An answer written to the dead relay used to leave its session going with a hole: that
      // call's 'updated' never came, and the page's calls stopped for good.
      await eventually(async () => (await calls()).every((n, i) => n >= (atKill[i] ?? 0) + 5), 'every page\'s calls go on', 30_000, 200)
        .catch(async (err: Error) => assert.fail(`${err.message}: calls at the kill ${atKill.join()}, now ${(await calls()).join()} (pages on ${before.map((w) => w.instance).join()})`));
      figures.rrKillAnsweredMs = Date.now() - killedAt;
      await Promise.all(pages.map((p) => p.page.evaluate(() => void ((globalThis as any).stopCalls = true))));
      figures.rrKillLostRelayedPolls = await Promise.all(['web-1', 'web-2'].map(async (id) => (await apiCluster(cluster.get(id))).stats.lostRelayedPolls));
    });
  });

  describe('translated pages: DISABLE_WEBSOCKETS=1, pages entering a member that sends every session to the other', () => {
    let procs: MeteorProcess[] = [];
    let context: BrowserContext;

    before(async function () {
      this.timeout(180_000);
      const db = uniqueDbUrl(mongo().url, 'm_translated');
      // tr-1 keeps no session itself (CLUSTER_SELF_WEIGHT=0): it carries each one to tr-2.
      procs = await Promise.all(['tr-1', 'tr-2'].map((id) => startBundleOnFreePort(web, id, (port) => ({
        ...memberEnv(db, 'translated', port), DISABLE_WEBSOCKETS: '1', HTTP_FORWARDED_COUNT: '1',
        ...(id === 'tr-1' ? { CLUSTER_SELF_WEIGHT: '0' } : {}),
      }))));
      await waitServing(procs, ['tr-1', 'tr-2']);
      context = await browser.newContext({ extraHTTPHeaders: { 'x-forwarded-for': '198.51.100.8' } });
    });

    after(async () => {
      await context?.close().catch(() => undefined);
      await Promise.all(procs.map((p) => p.kill('SIGKILL').catch(() => undefined)));
    });

    it('runs Meteor pages over polling carried by their entry to the member: methods, publications, client address', async () => {
      const [entry, member] = procs as [MeteorProcess, MeteorProcess];
      const pages: AppPage[] = [];
      for (let i = 0; i < 3; i++) pages.push(await openPage(context, entry.url));
      const who = await Promise.all(pages.map((p) => whoami(p)));
      await Promise.all(pages.map((p) => publishedInstance(p, 'tr-2')));
      assert.deepEqual(who.map((w) => w.instance), ['tr-2', 'tr-2', 'tr-2']);
      assert.deepEqual([...new Set(who.map((w) => w.clientAddress))], ['198.51.100.8']);
      assert.deepEqual([...new Set(await Promise.all(pages.map(transportOf)))], ['xhr-polling']);
      assert.deepEqual(pages.flatMap((p) => p.errors), []);
      const [e, m] = [(await apiCluster(entry)).stats, (await apiCluster(member)).stats];
      assert.equal(e.pollingHop, 'translate');
      assert.equal(e.translatedSessions, 3, 'the entry carries the three pages\' sessions');
      assert.equal(m.carriedSessions, 3, 'the member holds them as carried sessions');
      // A second call on each page reaches the same DDP session.
      const again = await Promise.all(pages.map((p) => whoami(p)));
      assert.deepEqual(again.map((w) => w.session), who.map((w) => w.session));
    });
  });

  describe('pinned pages: CLUSTER_BALANCER_URL and CLUSTER_PIN_DDP_URL=1', () => {
    let cluster: Cluster;
    let context: BrowserContext;

    before(async function () {
      this.timeout(180_000);
      cluster = await startWeb(web, 'pin', 2, (port) => ({ CLUSTER_BALANCER_URL: `http://127.0.0.1:${port}`, CLUSTER_PIN_DDP_URL: '1' }));
      context = await browser.newContext();
    });

    after(async () => {
      await context?.close().catch(() => undefined);
    });

    it('points each page at a member\'s balancer URL and, when it dies, falls back without Meteor\'s back-off', async () => {
      const pages: AppPage[] = [];
      for (let i = 0; i < 6; i++) pages.push(await openPage(context, cluster.get('web-0').url));
      const pinned = await Promise.all(pages.map((p) => p.page.evaluate(() => (globalThis as any).__meteor_runtime_config__.DDP_DEFAULT_CONNECTION_URL as string)));
      const members = new Map(['web-1', 'web-2'].map((id) => [cluster.get(id).url, id]));
      const pinnedTo = pinned.map((u) => members.get(new URL(u).origin));
      assert.ok(pinnedTo.every((id) => id !== undefined) && pinned.every((u) => /\/cluster-ddp\/[0-9a-f]{20}\/web$/.test(u)),
        `pinned to a member's path on its balancer URL: ${pinned.join()}`);
      const before = await Promise.all(pages.map((p) => whoami(p)));
      assert.deepEqual(before.map((w) => w.instance), pinnedTo, 'each page is served by the member it is pinned to, without a hop');
      assert.deepEqual(pages.flatMap((p) => p.errors), []);
      // The pages whose connection goes to web-2's balancer URL lose it when web-2 dies.
      const victim = 'web-2';
      const hit = pages.filter((_, i) => pinnedTo[i] === victim);
      assert.ok(hit.length > 0, `some pages pinned to ${victim}: ${pinned.join()}`);

      const killedAt = Date.now();
      await cluster.get(victim).kill('SIGKILL');
      await Promise.all(hit.map((p) => eventually(async () => (await whoami(p, 5000)).instance === 'web-1', 'the page on web-1', 30_000, 100)));
      const recovered = await Promise.all(hit.map((p) => reconnectedAfter(p, killedAt)));
      figures.pinnedKillReconnectMs = { median: median(recovered.map((r) => r.ms)), max: Math.max(...recovered.map((r) => r.ms)), pages: hit.length };
      assert.deepEqual(recovered.map((r) => r.waitedForBackoff), hit.map(() => false),
        `no page waited for Meteor's back-off retry:\n${recovered.map((r) => r.log).join('\n')}`);
    });
  });

  describe('workers: one instance with CLUSTER_WORKERS_COUNT=2 (one port, connections handed to the workers)', () => {
    let proc: MeteorProcess;
    let context: BrowserContext;
    const clients: WsDdpClient[] = [];

    before(async function () {
      this.timeout(180_000);
      const db = uniqueDbUrl(mongo().url, 'm_workers');
      proc = await startBundleOnFreePort(web, 'wk', (port) => ({ ...memberEnv(db, 'workers', port), CLUSTER_WORKERS_COUNT: '2', CLUSTER_SLOW_START: '0' }));
      await waitServing([proc], ['wk', 'wk-w1', 'wk-w2']);
      context = await browser.newContext();
    });

    after(async () => {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await context?.close().catch(() => undefined);
      await proc?.kill('SIGKILL');
    });

    it('serves pages and DDP sessions from the one port in the primary and both workers, clientAddress exact', async () => {
      const by: string[] = [];
      for (let i = 0; i < 9; i++) {
        const c = await wsDdp(proc.url, { localAddress: CLIENT_IP });
        clients.push(c);
        const w = (await c.call('whoami')) as Whoami;
        assert.equal(w.clientAddress, CLIENT_IP, `clientAddress on ${w.instance}`);
        by.push(w.instance);
      }
      figures.workersWsByInstance = by;
      assert.ok(by.includes('wk-w1') && by.includes('wk-w2'), `sessions on both workers: ${by.join()}`);
      const pages = [await openPage(context, proc.url), await openPage(context, proc.url), await openPage(context, proc.url)];
      const served = await Promise.all(pages.map((p) => whoami(p)));
      await Promise.all(pages.map((p, i) => publishedInstance(p, (served[i] as Whoami).instance)));
      figures.workersPagesByInstance = served.map((w) => w.instance);
      assert.deepEqual(pages.flatMap((p) => p.errors), [], 'no page errors');
      assert.ok(served.every((w) => w.clientAddress === '127.0.0.1'), `clientAddress: ${served.map((w) => w.clientAddress).join()}`);
    });

    it('SIGTERM drains the primary and both workers, then exits', async () => {
      const at = Date.now();
      proc.proc.kill('SIGTERM');
      const exit = await proc.exited;
      figures.workersSigtermExit = { ...exit, ms: Date.now() - at };
      assert.ok(exit.signal === 'SIGTERM' || exit.code === 143 || exit.code === 0, `exits after its drain: ${JSON.stringify(exit)}`);
      await Promise.all(clients.map((c) => c.closed));
      assert.ok(proc.logs.some((l) => /"event":"drain\.done","instance":"wk-w1"/.test(l.line)), `wk-w1 drained:\n${proc.tail()}`);
      assert.ok(proc.logs.some((l) => /"event":"drain\.done","instance":"wk-w2"/.test(l.line)), `wk-w2 drained:\n${proc.tail()}`);
    });
  });

  describe('meteor run (development mode)', () => {
    it('starts examples/meteor-app and serves a DDP session through the balancer', async function () {
      this.timeout(15 * 60_000);
      const port = await freePort();
      const db = uniqueDbUrl(mongo().url, 'm_run');
      const t0 = Date.now();
      // The endpoint is the tool's proxy, which passes everything on to the app's own port.
      const proc = await meteorRun(web, port, {
        MONGO_URL: db, CLUSTER_DISCOVERY_URL: db, CLUSTER_SECRET: TEST_SECRET, CLUSTER_ENDPOINT_URL: `http://127.0.0.1:${port}`,
      }, packageDirs);
      figures.meteorRunStartSeconds = Math.round((Date.now() - t0) / 1000);
      try {
        await proc.waitForLine(/"event":"cluster\.attached"/, 'the cluster to attach');
        const c = await wsDdp(proc.url);
        const w = (await c.call('whoami')) as Whoami;
        assert.equal(w.clientAddress, '127.0.0.1');
        const [doc] = await c.subscribe('whoami');
        assert.equal(doc?.fields.session, w.session);
        await c.close();
        const health = await httpRequest('GET', `${proc.url}/cluster/health`);
        assert.equal(health.status, 200);
      } finally {
        await proc.kill('SIGTERM');
      }
    });
  });
});
