import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import {
  DashboardAuth, FailureLimiter, SESSION_COOKIE, SESSION_TTL_MS, clientKey, dashboardPasswordFrom, dashboardPasswords,
} from '../lib/dashboard/auth';
import { EventLog, SessionHistory } from '../lib/dashboard/history';
import { METRIC_NAMES } from '../lib/metrics';
import { TEST_SECRET, spawnInstance, startCluster, startInstance, waitView, type ChildInstance, type Instance } from './support/cluster';
import { httpRequest, wsDdp, type DdpClient, type HttpResult } from '../examples/node-ddp-app/clients';
import { mongo, uniqueDbUrl } from './support/mongo';
import { eventually } from './support/wait';

const PASSWORD = 'correct-horse-battery-staple';
const CHROMIUM = '/usr/bin/chromium';
const basic = (password: string, user = 'prometheus'): Record<string, string> =>
  ({ authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` });
const NO_STORE = /no-store/;

describe('dashboard: pieces', () => {
  it('derives the password from CLUSTER_SECRET exactly like the documented one-liners', () => {
    const derived = dashboardPasswordFrom(TEST_SECRET);
    assert.match(derived, /^[0-9a-f]{64}$/);
    const env = { ...process.env, CLUSTER_SECRET: TEST_SECRET };
    const viaNode = execFileSync(process.execPath, ['-e',
      "console.log(require('crypto').createHmac('sha256',process.env.CLUSTER_SECRET).update('ddp-cluster/dashboard').digest('hex'))"], { env, encoding: 'utf8' });
    assert.equal(viaNode.trim(), derived);
    const viaOpenssl = execFileSync('sh', ['-c', 'printf %s ddp-cluster/dashboard | openssl dgst -sha256 -hmac "$CLUSTER_SECRET" | awk \'{print $NF}\''],
      { env, encoding: 'utf8' });
    assert.equal(viaOpenssl.trim(), derived);
    assert.deepEqual(dashboardPasswords({ dashboardPassword: null, secret: null, previousSecret: null }), []);
    assert.deepEqual(dashboardPasswords({ dashboardPassword: PASSWORD, secret: TEST_SECRET, previousSecret: null }), [PASSWORD]);
    assert.equal(dashboardPasswords({ dashboardPassword: null, secret: TEST_SECRET, previousSecret: 'old-secret-0123456789abcdef' }).length, 2);
  });

  it('signs session tokens with an expiry and rejects tampered, expired or foreign ones', async () => {
    const auth = new DashboardAuth([PASSWORD]);
    const now = Date.now();
    const { token, expiresAt } = await auth.issueToken(now);
    assert.equal(expiresAt, now + SESSION_TTL_MS);
    assert.ok(await auth.checkToken(token, now));
    assert.ok(!(await auth.checkToken(token, expiresAt)), 'expired');
    const flipped = token.slice(0, -1) + (token.endsWith('A') ? 'B' : 'A');
    assert.ok(!(await auth.checkToken(flipped, now)), 'tampered signature');
    const later = token.replace(/^v1\.(\d+)/, (_m, t: string) => `v1.${Number(t) + 1000}`);
    assert.ok(!(await auth.checkToken(later, now)), 'extended expiry');
    assert.ok(!(await new DashboardAuth(['another-password-1234']).checkToken(token, now)), 'other password');
    assert.ok(await new DashboardAuth([PASSWORD]).checkToken(token, now), 'another instance with the same password accepts it');
    assert.ok(auth.checkPassword(PASSWORD));
    assert.ok(!auth.checkPassword(PASSWORD.slice(0, -1)));
    assert.ok(!auth.checkPassword(''));
  });

  it('limits failures per address in a bounded map; IPv6 by /64', () => {
    const limiter = new FailureLimiter({ maxFailures: 3, windowMs: 1000, maxEntries: 100 });
    for (let i = 0; i < 3; i++) assert.equal(limiter.blockedFor('1.2.3.4', 0), 0);
    assert.equal(limiter.fail('1.2.3.4', 0), false);
    limiter.fail('1.2.3.4', 0);
    assert.equal(limiter.fail('1.2.3.4', 0), true, 'the third failure uses up the allowance');
    assert.equal(limiter.blockedFor('1.2.3.4', 10), 990);
    assert.equal(limiter.blockedFor('5.6.7.8', 10), 0);
    assert.equal(limiter.blockedFor('1.2.3.4', 1000), 0, 'window over');
    for (let i = 0; i < 1000; i++) limiter.fail(`10.0.${i >> 8}.${i & 255}`, 5);
    assert.ok(limiter.size <= 100);
    const req = (remoteAddress: string, xff?: string): Parameters<typeof clientKey>[0] =>
      ({ socket: { remoteAddress }, headers: xff ? { 'x-forwarded-for': xff } : {} }) as unknown as Parameters<typeof clientKey>[0];
    assert.equal(clientKey(req('2001:db8:1:2:3:4:5:6'), 0), '2001:db8:1:2::/64');
    assert.equal(clientKey(req('2001:db8::1'), 0), '2001:db8:0:0::/64');
    assert.equal(clientKey(req('::ffff:127.0.0.1'), 0), '127.0.0.1');
    assert.equal(clientKey(req('10.0.0.1', '203.0.113.9, 10.0.0.2'), 0), '10.0.0.1', 'X-Forwarded-For ignored by default');
    assert.equal(clientKey(req('10.0.0.1', '203.0.113.9, 10.0.0.2'), 2), '203.0.113.9', 'HTTP_FORWARDED_COUNT=2');
  });

  it('keeps bounded session history and events', () => {
    const h = new SessionHistory(5);
    for (let t = 1; t <= 8; t++) h.record(t, [{ id: 'a', load: { sessions: t, capacity: 1, elu: 0, delayMs: 0, cpu: 0, rss: 0 } }]);
    assert.deepEqual(h.since().map((s) => s.t), [4, 5, 6, 7, 8]);
    assert.deepEqual(h.since(6).map((s) => s.s.a), [7, 8]);
    const ev = new EventLog(3);
    for (let i = 0; i < 5; i++) ev.add(i, 'join', `m${i}`, '');
    assert.deepEqual(ev.after().map((e) => e.member), ['m2', 'm3', 'm4']);
    assert.deepEqual(ev.after(4).map((e) => e.seq), [5]);
  });
});

describe('dashboard (real 3-instance cluster, real headless Chromium)', function () {
  this.timeout(180_000);
  let cluster: Instance[] = [];
  let charlie: ChildInstance | null = null;
  let clients: DdpClient[] = [];
  let context: BrowserContext | null = null;
  let userDataDir = '';
  let base = '';
  const figures: Record<string, unknown> = {};

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium (.ci/run does it)`);
    const url = uniqueDbUrl(mongo().url, 'dashboard');
    // A short stale horizon on the observers, so a killed member is marked down by heartbeat too
    // (the active health checks usually get there first).
    cluster = await startCluster(['alpha', 'bravo'], url, () => ({ attach: { dashboardPassword: PASSWORD, staleMs: 3000 } }));
    charlie = await spawnInstance('charlie', {
      CLUSTER_DISCOVERY_URL: url, CLUSTER_DASHBOARD_PASSWORD: PASSWORD, CLUSTER_STALE_HORIZON: '3s', CLUSTER_APP_VERSION: '1.4.2',
    });
    await Promise.all(cluster.map((i) => waitView(i.cluster, `${i.id} sees charlie serving`,
      (v) => v.members.filter((m) => m.healthy && m.state === 'serving').length === 3)));
    base = `${(cluster[0] as Instance).url}/cluster`;
    // Some sessions to look at: websocket clients entering alpha, spread over the three.
    for (let i = 0; i < 12; i++) clients.push(await wsDdp((cluster[0] as Instance).url));
  });

  after(async () => {
    process.stdout.write(`      figures: ${JSON.stringify(figures)}\n`);
    await context?.close().catch(() => undefined);
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await charlie?.kill();
    await Promise.all(cluster.map((i) => i.close()));
  });

  const get = (p: string, headers: Record<string, string> = {}, localAddress?: string): Promise<HttpResult> =>
    httpRequest('GET', `${base}${p}`, undefined, { headers, localAddress });
  const post = (p: string, body: string, headers: Record<string, string> = {}, localAddress?: string): Promise<HttpResult> =>
    httpRequest('POST', `${base}${p}`, body, { headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, localAddress });

  it('answers the API and metrics only with the password, never caching, and leaks nothing without it', async () => {
    const none = await get('/api/cluster');
    assert.equal(none.status, 401);
    assert.match(String(none.headers['www-authenticate']), /^Basic realm="ddp-cluster"/);
    const wrong = await get('/api/cluster', basic('not-the-password-at-all'));
    assert.equal(wrong.status, 401);
    for (const r of [none, wrong]) {
      assert.doesNotMatch(r.body, /bravo|charlie|sessions|endpoint/);
      assert.match(String(r.headers['cache-control']), NO_STORE);
    }
    const page = await get('/');
    assert.equal(page.status, 200, 'the login form');
    assert.match(page.body, /type="password"/);
    assert.doesNotMatch(page.body, /bravo|charlie/);

    const ok = await get('/api/cluster', basic(PASSWORD));
    assert.equal(ok.status, 200);
    assert.match(String(ok.headers['cache-control']), NO_STORE);
    const api = JSON.parse(ok.body) as { members: { id: string; healthy: boolean; appVersion: string | null; check: unknown }[]; totals: { members: number; sessions: number } };
    assert.deepEqual(api.members.map((m) => m.id), ['alpha', 'bravo', 'charlie']);
    assert.ok(api.members.every((m) => m.healthy));
    assert.equal(api.members.find((m) => m.id === 'charlie')?.appVersion, '1.4.2');
    assert.equal(api.totals.members, 3);

    // Every instance shows the whole cluster.
    const fromBravo = await httpRequest('GET', `${(cluster[1] as Instance).url}/cluster/api/cluster`, undefined, { headers: basic(PASSWORD) });
    assert.deepEqual((JSON.parse(fromBravo.body) as { members: { id: string }[] }).members.map((m) => m.id), ['alpha', 'bravo', 'charlie']);
    const fromCharlie = await httpRequest('GET', `${charlie?.url}/cluster/api/cluster`, undefined, { headers: basic(PASSWORD) });
    assert.equal(fromCharlie.status, 200);

    const metrics = await get('/metrics', basic(PASSWORD));
    assert.equal(metrics.status, 200);
    assert.match(String(metrics.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    for (const name of METRIC_NAMES) assert.match(metrics.body, new RegExp(`^# TYPE ${name} `, 'm'), `${name} is exposed`);
    assert.match(metrics.body, /^ddp_cluster_member_sessions\{member="charlie",service="web"\} \d+$/m);
    assert.match(metrics.body, /^ddp_cluster_members\{state="serving",health="healthy"\} 3$/m);
    assert.match(metrics.body, /^ddp_cluster_routing_decisions_total\{action="[a-z]+",reason="[^"]+"\} \d+$/m);
    assert.match(metrics.body, /^ddp_cluster_routed_requests_total\{transport="raw-websocket"\} \d+$/m);
    assert.equal((await get('/metrics')).status, 401);

    // Latency of the JSON API (what the page polls every second), sequential, keep-alive off.
    const times: number[] = [];
    for (let i = 0; i < 40; i++) {
      const t = performance.now();
      assert.equal((await get('/api/cluster', basic(PASSWORD))).status, 200);
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    figures.apiLatencyMs = { p50: round(times[20] ?? 0), p95: round(times[38] ?? 0), bytes: ok.body.length };
    const t = performance.now();
    await get('/metrics', basic(PASSWORD));
    figures.metricsScrapeMs = round(performance.now() - t);
    figures.metricsBytes = metrics.body.length;
  });

  it('logs in with a signed, HttpOnly, SameSite=Strict cookie; Secure over https; refuses cross-site logins', async () => {
    const origin = (cluster[0] as Instance).url;
    const good = await post('/login', `password=${encodeURIComponent(PASSWORD)}`, { origin });
    assert.equal(good.status, 303);
    assert.equal(good.headers.location, '/cluster/');
    const cookie = String(good.headers['set-cookie']?.[0]);
    assert.match(cookie, new RegExp(`^${SESSION_COOKIE}=v1\\.`));
    assert.match(cookie, /; HttpOnly/);
    assert.match(cookie, /; SameSite=Strict/);
    assert.match(cookie, /; Path=\/cluster/);
    assert.match(cookie, /; Max-Age=\d+/);
    assert.doesNotMatch(cookie, /; Secure/);
    const pair = cookie.split(';')[0] as string;
    const api = await get('/api/cluster', { cookie: pair });
    assert.equal(api.status, 200);
    assert.equal((await get('/api/cluster', { cookie: `${pair.slice(0, -2)}xx` })).status, 401, 'tampered cookie');

    const tls = await post('/login', `password=${encodeURIComponent(PASSWORD)}`, { origin: origin.replace('http:', 'https:'), 'x-forwarded-proto': 'https' });
    assert.match(String(tls.headers['set-cookie']?.[0]), /; Secure/);

    const cross = await post('/login', `password=${encodeURIComponent(PASSWORD)}`, { origin: 'http://evil.example' });
    assert.equal(cross.status, 403);
    assert.equal(cross.headers['set-cookie'], undefined);
    assert.equal((await post('/login', `password=${encodeURIComponent(PASSWORD)}`, { 'sec-fetch-site': 'cross-site' })).status, 403);
    assert.equal((await post('/logout', '', { origin: 'http://evil.example', cookie: pair })).status, 403);
    const logout = await post('/logout', '', { origin, cookie: pair });
    assert.equal(logout.status, 303);
    assert.match(String(logout.headers['set-cookie']?.[0]), /Max-Age=0/);

    const wrong = await post('/login', 'password=nope-nope-nope-nope', { origin });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers['set-cookie'], undefined);
    assert.doesNotMatch(wrong.body, /bravo|charlie/);
    assert.match(wrong.body, /Wrong password/);
    // No state-changing GETs.
    assert.equal((await get('/logout', { cookie: pair })).status, 405);
    assert.equal((await get('/login')).status, 303);
  });

  it('rate-limits failed attempts per client address', async () => {
    const attacker = '127.0.0.3';
    for (let i = 0; i < 10; i++) assert.equal((await get('/api/cluster', basic(`guess-${i}-xxxxxxxx`), attacker)).status, 401);
    const blocked = await get('/api/cluster', basic(PASSWORD), attacker);
    assert.equal(blocked.status, 429, 'even the right password is refused while blocked');
    assert.ok(Number(blocked.headers['retry-after']) > 0);
    assert.doesNotMatch(blocked.body, /bravo/);
    assert.equal((await post('/login', `password=${encodeURIComponent(PASSWORD)}`, {}, attacker)).status, 429);
    assert.equal((await get('/api/cluster', basic(PASSWORD), '127.0.0.4')).status, 200, 'other addresses are not affected');
    assert.ok(cluster[0]?.logs.some((l) => l.includes('"dashboard.login_blocked"') && l.includes('127.0.0.3')));
  });

  it('shows the live cluster in Chromium: three instances, then a kill -9 marked down without reload', async () => {
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ddp-cluster-chromium-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run'],
      viewport: { width: 1440, height: 900 },
    });
    const page: Page = context.pages()[0] ?? await context.newPage();
    const problems: string[] = [];
    page.on('console', (m) => void (m.type() === 'error' && problems.push(m.text())));
    page.on('pageerror', (e) => void problems.push(e.message));

    const first = await page.goto(`${base}/`);
    assert.equal(first?.status(), 200);
    await page.getByLabel('Password').fill('wrong-password-attempt');
    const [denied] = await Promise.all([page.waitForResponse((r) => r.url().endsWith('/cluster/login')), page.getByRole('button', { name: 'Log in' }).click()]);
    assert.equal(denied.status(), 401);
    assert.doesNotMatch(await denied.text(), /bravo|charlie/);
    await page.getByRole('alert').filter({ hasText: 'Wrong password' }).waitFor();

    problems.splice(0); // the browser logs the 401 of the wrong password
    await page.getByLabel('Password').fill(PASSWORD);
    await page.getByRole('button', { name: 'Log in' }).click();
    const rows = page.locator('#rows tr');
    await rows.filter({ hasText: 'charlie' }).waitFor();
    assert.equal(await rows.count(), 3);
    for (const id of ['alpha', 'bravo', 'charlie']) {
      assert.match(await rows.filter({ hasText: id }).innerText(), /serving\s+up/, `${id} is serving and up`);
    }
    const weight = await page.evaluate('document.documentElement.outerHTML.length');
    figures.pageChars = weight;

    // Keyboard: the first Tab reaches the pause control, Enter toggles it.
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate('document.activeElement && document.activeElement.id'), 'pause');
    await page.keyboard.press('Enter');
    assert.equal(await page.getAttribute('#pause', 'aria-pressed'), 'true');
    await page.keyboard.press('Enter');
    assert.equal(await page.getAttribute('#pause', 'aria-pressed'), 'false');

    // Live: mark the page, kill charlie, wait for the row to turn DOWN; the mark proves no reload.
    await page.evaluate('window.mark = 42');
    const killedAt = performance.now();
    await charlie?.kill('SIGKILL');
    await page.locator('#rows tr.down', { hasText: 'charlie' }).waitFor({ timeout: 20_000 });
    figures.downShownAfterMs = Math.round(performance.now() - killedAt);
    assert.equal(await page.evaluate('window.mark'), 42, 'no reload');
    assert.match(await rows.filter({ hasText: 'charlie' }).innerText(), /DOWN/);
    await page.locator('#events li', { hasText: 'charlie' }).filter({ hasText: /down/ }).first().waitFor();
    assert.match(await page.locator('#cards').innerText(), /2 \/ 3/);

    // A fresh page load shows the history kept server-side (once there are five samples of it: the
    // cluster may be younger than five seconds here).
    await eventually(async () => (JSON.parse((await get('/api/cluster', basic(PASSWORD), '127.0.0.5')).body) as { history: unknown[] }).history.length >= 5,
      'five samples of history kept server-side');
    const fresh = await context.newPage();
    await fresh.goto(`${base}/`);
    await fresh.locator('#chart polyline').first().waitFor();
    const points = await fresh.locator('#chart polyline').first().getAttribute('points');
    assert.ok((points ?? '').split(' ').length >= 5, `history on first load: ${points}`);
    await fresh.close();

    fs.mkdirSync('.artifacts', { recursive: true });
    await page.screenshot({ path: '.artifacts/dashboard.png', fullPage: true });
    assert.deepEqual(problems, [], 'no console errors (CSP violations show here)');
  });

  it('is disabled (404, logged once) without a password or secret, and uses the derived password with a secret only', async () => {
    const url = uniqueDbUrl(mongo().url, 'dashboard_disabled');
    const bare = await startInstance({ id: 'bare', discoveryUrl: url, attach: { secret: null } });
    const derived = await startInstance({ id: 'derived', discoveryUrl: url });
    try {
      for (const p of ['/', '/api/cluster', '/metrics']) assert.equal((await httpRequest('GET', `${bare.url}/cluster${p}`)).status, 404);
      assert.equal(bare.logs.filter((l) => l.includes('"dashboard.disabled"')).length, 1);
      assert.equal((await httpRequest('GET', `${bare.url}/cluster/health`)).status, 200, 'health stays open');
      const pw = dashboardPasswordFrom(TEST_SECRET);
      assert.equal((await httpRequest('GET', `${derived.url}/cluster/api/cluster`, undefined, { headers: basic(pw) })).status, 200);
      assert.equal((await httpRequest('GET', `${derived.url}/cluster/api/cluster`, undefined, { headers: basic(TEST_SECRET) })).status, 401);
    } finally {
      await bare.close();
      await derived.close();
    }
  });
});

function round(n: number): number {
  return Math.round(n * 10) / 10;
}
