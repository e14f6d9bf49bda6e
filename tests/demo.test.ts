import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';

/** Runs the demo to completion; `onOut` sees the output so far whenever more arrives. */
async function demo(args: readonly string[], onOut?: (out: string) => void): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'demo/demo.ts', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const add = (d: Buffer): void => {
    out += d.toString();
    onOut?.(out);
  };
  child.stdout.on('data', add);
  child.stderr.on('data', add);
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, out };
}

/** The last table the demo printed: header line and rows. */
function lastTable(out: string): { head: string; rows: string[]; status: string } {
  const last = out.slice(out.lastIndexOf('t='));
  const lines = last.split('\n');
  return {
    head: lines[0] ?? '',
    rows: lines.filter((l) => /^ {2}(alpha|bravo|charlie) /.test(l)),
    status: lines.find((l) => l.startsWith('  status: ')) ?? '',
  };
}

// `npm run demo` is README's main command: keep it working. Runs it briefly, end to end.
describe('npm run demo', function () {
  this.timeout(120_000);

  it('starts three instances with the dashboard, balances the simulated clients and stops by itself', async () => {
    let api: Promise<{ status: number; ids: string[] }> | null = null;
    const { code, out } = await demo(['--duration', '8', '--clients', '30', '--base-port', '0'], (text) => {
      const m = /^ {2}dashboard {2}(http:\/\/\S+\/cluster) {3}password: (\S+)/m.exec(text);
      if (api === null && m?.[1] && m[2]) {
        const auth = `Basic ${Buffer.from(`demo:${m[2]}`).toString('base64')}`;
        api = fetch(`${m[1]}/api/cluster`, { headers: { authorization: auth } })
          .then(async (r) => ({ status: r.status, ids: ((await r.json()) as { members: { id: string }[] }).members.map((x) => x.id) }));
      }
    });
    assert.equal(code, 0, out);
    assert.ok(api, `the dashboard URL and password are printed:\n${out.slice(0, 1500)}`);
    assert.deepEqual(await api, { status: 200, ids: ['alpha', 'bravo', 'charlie'] }, 'the printed login opens the dashboard API');
    assert.match(out, /^ {2}metrics {4}curl -u any:\S+ http:\/\/\S+\/cluster\/metrics$/m);
    const t = lastTable(out);
    assert.match(t.head, /members=3 {2}sessions=30 {2}clients=30/, out.slice(-800));
    assert.equal(t.rows.length, 3, out.slice(-800));
    for (const row of t.rows) {
      assert.match(row, /serving +up/);
      assert.ok(Number(row.split(/\s+/)[4]) > 0, `every instance has sessions: ${row}`);
    }
    assert.match(t.status, /all 30 clients connected/);
    assert.match(out, /stopping…\s*$/);
  });

  it('kills an instance on request: its clients reconnect to the survivors, and it comes back', async () => {
    const { code, out } = await demo(['--duration', '17', '--clients', '30', '--base-port', '0', '--kill-after', '5']);
    assert.equal(code, 0, out);
    const moved = /charlie killed: (\d+)\/(\d+) of its clients reconnected elsewhere in [\d.]+ s \(([^)]*)\)/.exec(out);
    assert.ok(moved, out.slice(-1500));
    assert.equal(moved[1], moved[2], 'every client of the killed instance reconnected');
    assert.doesNotMatch(moved[3] ?? '', /charlie/);
    assert.match(out, /charlie restarted: new sessions go to it again/);
    const t = lastTable(out);
    assert.match(t.head, /members=3 {2}sessions=30 {2}clients=30/, out.slice(-800));
    assert.equal(t.rows.filter((r) => /serving +up/.test(r)).length, 3, out.slice(-800));
  });
});
