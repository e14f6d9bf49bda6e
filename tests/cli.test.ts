import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { MongoClient } from 'mongodb';
import { DRAIN_FIELD, checkDrainRequest, drainSignatureParts, makeDrainRequest, type DrainRequest } from '../lib/commands';
import { dashboardPasswordFrom } from '../lib/dashboard/auth';
import { signEntry, type EntryDoc } from '../lib/discovery/entry';
import { endpointHash, hmac, keysFrom } from '../lib/sign';
import { TEST_SECRET, startCluster, type Instance } from './support/cluster';
import { mongo, uniqueDbUrl } from './support/mongo';

interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** Runs a command with a clean CLUSTER_* environment; `onOut` sees stdout as it arrives. */
async function exec(cmd: string, args: readonly string[], env: Record<string, string> = {}, onOut?: (out: string) => void): Promise<Run> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CLUSTER_')));
  const child = spawn(cmd, [...args], { env: { ...clean, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    onOut?.(out);
  });
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, out, err };
}

const cli = (args: readonly string[], env: Record<string, string> = {}, onOut?: (out: string) => void): Promise<Run> =>
  exec(process.execPath, ['--import', 'tsx', 'lib/cli.ts', ...args], env, onOut);

describe('CLI: ddp-cluster status / drain / dashboard-password', function () {
  this.timeout(120_000);
  let url = '';
  let cluster: Instance[] = [];
  let client: MongoClient;

  before(async () => {
    url = uniqueDbUrl(mongo().url, 'cli');
    cluster = await startCluster(['alpha', 'bravo'], url, () => ({ attach: { drainWindowMs: 0 } }));
    client = new MongoClient(url);
    await client.connect();
    // A forged entry: someone with write access to the collection but without the secret.
    const coll = client.db().collection<Record<string, unknown> & { _id: string }>('clusterEndpoints');
    const alpha = await coll.findOne({ _id: 'alpha' });
    assert.ok(alpha);
    await coll.insertOne({ ...alpha, _id: 'evil', endpoint: 'http://203.0.113.66:3000', sig: 'forged', heartbeatAt: new Date() });
    // A validly signed entry that no live process owns, so a request written to it stays there to read.
    const keys = keysFrom(TEST_SECRET, null);
    assert.ok(keys);
    const ghost = signEntry(keys, { ...(alpha as unknown as Omit<EntryDoc, 'sig'>), _id: 'ghost', endpoint: 'http://127.0.0.1:9/ghost',
      endpointHash: endpointHash('http://127.0.0.1:9/ghost'), heartbeatAt: new Date() });
    await coll.insertOne(ghost as unknown as Record<string, unknown> & { _id: string });
  });

  after(async () => {
    await client?.close();
    await Promise.all(cluster.map((i) => i.close()));
  });

  it('status prints the membership table, verifies signatures and says how many entries were ignored', async () => {
    const r = await cli(['status', '--discovery', url, '--secret', TEST_SECRET]);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.split('\n');
    assert.match(lines[0] ?? '', /^3 members, [23] healthy, \d+ sessions of [23]000 capacity \(collection clusterEndpoints\)$/);
    assert.match(lines[1] ?? '', /^ID +SERVICE +STATE +HEALTH +SESSIONS +CAPACITY .* ENDPOINT$/);
    assert.match(lines[2] ?? '', /^alpha +web +serving +up +\d+ +1000 .*http:\/\/127\.0\.0\.1:\d+$/);
    assert.match(lines[3] ?? '', /^bravo +web +serving +up /);
    assert.doesNotMatch(r.out, /^evil/m);
    assert.match(r.out, /^signatures verified; 1 entry ignored: evil \(bad signature\)$/m);
  });

  it('status without a secret shows every entry and says signatures were not verified; --json; env fallbacks', async () => {
    const r = await cli(['status', '--discovery', url]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^4 members/);
    assert.match(r.out, /^evil /m);
    assert.match(r.out, /signatures not verified/);

    const j = await cli(['status', '--json'], { CLUSTER_DISCOVERY_URL: url, CLUSTER_SECRET: TEST_SECRET });
    assert.equal(j.code, 0, j.err);
    const parsed = JSON.parse(j.out) as { verified: boolean; members: { id: string; healthy: boolean; endpoint: string }[]; ignored: { id: string; reason: string }[]; totals: { members: number } };
    assert.equal(parsed.verified, true);
    assert.deepEqual(parsed.members.map((m) => m.id), ['alpha', 'bravo', 'ghost']);
    assert.deepEqual(parsed.ignored, [{ id: 'evil', reason: 'bad signature' }]);
    assert.equal(parsed.totals.members, 3);
  });

  it('fails clearly: no discovery URL, bad URL, unreachable discovery (exit 2)', async () => {
    const none = await cli(['status']);
    assert.equal(none.code, 1);
    assert.match(none.err, /--discovery <mongodb-url> \(or CLUSTER_DISCOVERY_URL\) is required/);
    const bad = await cli(['status', '--discovery', 'http://x']);
    assert.equal(bad.code, 1);
    assert.match(bad.err, /--discovery <redacted, 8 bytes> is invalid: use a MongoDB URL/);
    const down = await cli(['status', '--discovery', 'mongodb://127.0.0.1:9/x', '--timeout', '2']);
    assert.equal(down.code, 2);
    assert.match(down.err, /discovery not reachable within 2 s/);
  });

  it('drain writes a signed request on the member\'s entry that verifies with the exported helper', async () => {
    const before = Date.now();
    const r = await cli(['drain', 'ghost', '--discovery', url], { CLUSTER_SECRET: TEST_SECRET });
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^drain requested for ghost \(http:\/\/127\.0\.0\.1:9\/ghost\) at \S+; it acts on its next heartbeat$/m);
    const doc = await client.db().collection<{ _id: string; drainRequest?: DrainRequest }>('clusterEndpoints').findOne({ _id: 'ghost' });
    const req = doc?.[DRAIN_FIELD];
    assert.ok(req, 'drainRequest written on ghost\'s entry');
    assert.equal(req.v, 1);
    assert.equal(req.instanceId, 'ghost');
    assert.ok(req.requestedAt instanceof Date && req.requestedAt.getTime() >= before - 1000);
    assert.match(req.nonce, /^[A-Za-z0-9_-]{22}$/);
    assert.match(req.requestedBy, /@/);
    // The signature, spelled out as README documents it.
    assert.equal(req.sig, hmac(TEST_SECRET, ['ddp-cluster/command/v1', 'drain', 'ghost', String(req.requestedAt.getTime()), req.nonce, req.requestedBy]));
    const keys = keysFrom(TEST_SECRET, null);
    assert.ok(keys);
    const check = checkDrainRequest(req, keys, { instanceId: 'ghost', startedAt: before - 60_000, now: Date.now() });
    assert.ok(check.ok, JSON.stringify(check));
  });

  it('drain refuses without a secret, with a wrong secret and for an unknown id', async () => {
    const noSecret = await cli(['drain', 'bravo', '--discovery', url]);
    assert.equal(noSecret.code, 1);
    assert.match(noSecret.err, /--secret \(or CLUSTER_SECRET\) is required/);
    const wrong = await cli(['drain', 'alpha', '--discovery', url, '--secret', 'some-other-secret-0123456789']);
    assert.equal(wrong.code, 1);
    assert.match(wrong.err, /member alpha is in the registry but its entry was ignored \(bad signature\): wrong --secret\?/);
    const unknown = await cli(['drain', 'zulu', '--discovery', url, '--secret', TEST_SECRET]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.err, /no member zulu in clusterEndpoints \(ids: alpha, bravo, ghost\)/);
    const forged = await cli(['drain', 'evil', '--discovery', url, '--secret', TEST_SECRET]);
    assert.equal(forged.code, 1);
    const alpha = await client.db().collection<{ _id: string; drainRequest?: unknown }>('clusterEndpoints').findOne({ _id: 'alpha' });
    assert.equal(alpha?.drainRequest, undefined, 'nothing written');
  });

  it('drain --wait: the instance acts on the request (core) and the CLI reports it draining', async () => {
    const bravo = cluster[1] as Instance;
    const r = await cli(['drain', 'bravo', '--discovery', url, '--secret', TEST_SECRET, '--wait', '--timeout', '20']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^drain requested for bravo /m);
    assert.match(r.out, /^bravo is draining$/m);
    assert.equal(bravo.cluster.view().self?.state, 'draining');
    assert.ok(bravo.logs.some((l) => l.includes('"command.drain"')), 'the instance logged the verified request');
    const doc = await client.db().collection<{ _id: string; drainRequest?: unknown }>('clusterEndpoints').findOne({ _id: 'bravo' });
    assert.equal(doc?.drainRequest, undefined, 'the instance removed the request');
    const again = await cli(['drain', 'bravo', '--discovery', url, '--secret', TEST_SECRET]);
    assert.equal(again.code, 0);
    assert.match(again.out, /bravo is already draining/);
  });

  it('dashboard-password prints the password derived from the secret', async () => {
    const r = await cli(['dashboard-password'], { CLUSTER_SECRET: TEST_SECRET });
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `${dashboardPasswordFrom(TEST_SECRET)}\n`);
    const none = await cli(['dashboard-password']);
    assert.equal(none.code, 1);
    assert.match(none.err, /--secret \(or CLUSTER_SECRET\) is required/);
    const help = await cli(['--help']);
    assert.equal(help.code, 0);
    for (const c of ['status', 'drain', 'dashboard-password']) assert.match(help.out, new RegExp(`^  ${c} `, 'm'));
  });

  it('works as `npm run cli` from source and as the published bin (dist + bin/ddp-cluster.js)', async () => {
    const viaNpm = await exec('npm', ['run', '-s', 'cli', '--', 'dashboard-password'], { CLUSTER_SECRET: TEST_SECRET });
    assert.equal(viaNpm.code, 0, viaNpm.err);
    assert.equal(viaNpm.out.trim(), dashboardPasswordFrom(TEST_SECRET));

    // Build lib/ the way `prepare` does, into a scratch package next to node_modules.
    const pkg = path.resolve('.artifacts', 'pkg-bin-test');
    fs.rmSync(pkg, { recursive: true, force: true });
    fs.mkdirSync(path.join(pkg, 'bin'), { recursive: true });
    const tsc = await exec(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json', '--outDir', path.join(pkg, 'dist'),
      '--declaration', 'false', '--sourceMap', 'false']);
    assert.equal(tsc.code, 0, tsc.out + tsc.err);
    fs.copyFileSync('bin/ddp-cluster.js', path.join(pkg, 'bin', 'ddp-cluster.js'));
    const pkgJson = JSON.parse(fs.readFileSync('package.json', 'utf8')) as { bin: Record<string, string> };
    assert.equal(pkgJson.bin['ddp-cluster'], 'bin/ddp-cluster.js');
    const viaBin = await exec(process.execPath, [path.join(pkg, 'bin', 'ddp-cluster.js'), 'status', '--discovery', url, '--secret', TEST_SECRET]);
    assert.equal(viaBin.code, 0, viaBin.err);
    assert.match(viaBin.out, /^3 members/);
    fs.rmSync(pkg, { recursive: true, force: true });
  });
});

describe('drain request signature (lib/commands.ts)', () => {
  const keys = keysFrom(TEST_SECRET, 'previous-secret-0123456789');
  const now = 1_800_000_000_000;
  const opts = { instanceId: 'web-1', startedAt: now - 60_000, now };
  assert.ok(keys);

  it('accepts a fresh request for this instance, signed with the current or previous secret', () => {
    const r = makeDrainRequest(TEST_SECRET, 'web-1', { now: now - 1000, requestedBy: 'ops@host' });
    assert.deepEqual(checkDrainRequest(r, keys, opts), { ok: true, request: r });
    const old = makeDrainRequest('previous-secret-0123456789', 'web-1', { now: now - 1000 });
    assert.ok(checkDrainRequest(old, keys, opts).ok);
    assert.deepEqual(drainSignatureParts(r), ['ddp-cluster/command/v1', 'drain', 'web-1', String(now - 1000), r.nonce, 'ops@host']);
  });

  it('refuses forged, misaddressed, stale, future, pre-start and replayed requests', () => {
    const fresh = makeDrainRequest(TEST_SECRET, 'web-1', { now: now - 1000 });
    const reason = (raw: unknown, o: Partial<typeof opts & { seen: (n: string) => boolean }> = {}): string => {
      const c = checkDrainRequest(raw, keys, { ...opts, ...o });
      return c.ok ? 'ok' : c.reason;
    };
    assert.equal(reason(makeDrainRequest('wrong-secret-0123456789abc', 'web-1', { now: now - 1000 })), 'bad signature');
    assert.equal(reason({ ...fresh, requestedAt: new Date(now - 500) }), 'bad signature');
    assert.equal(reason({ ...fresh, requestedBy: 'someone else' }), 'bad signature');
    assert.equal(reason({ ...fresh, sig: undefined }), 'bad signature');
    assert.equal(reason(makeDrainRequest(TEST_SECRET, 'web-2', { now: now - 1000 })), 'addressed to another instance');
    assert.equal(reason(makeDrainRequest(TEST_SECRET, 'web-1', { now: now - 6 * 60_000 }), { startedAt: 0 }), 'expired');
    assert.equal(reason(makeDrainRequest(TEST_SECRET, 'web-1', { now: now + 5 * 60_000 })), 'requested in the future');
    assert.equal(reason(makeDrainRequest(TEST_SECRET, 'web-1', { now: now - 120_000 })), 'requested before this process started');
    assert.equal(reason(fresh, { seen: (n) => n === fresh.nonce }), 'already handled');
    assert.equal(reason(null), 'not a document');
    assert.equal(reason({ ...fresh, v: 2 }), 'unknown version');
    assert.equal(reason({ ...fresh, requestedAt: 'yesterday' }), 'malformed');
  });
});
