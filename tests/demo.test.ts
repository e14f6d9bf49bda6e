import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';

// `npm run demo` is README's main command: keep it working. Runs it briefly, end to end.
describe('npm run demo', function () {
  this.timeout(120_000);

  it('starts three instances, balances the simulated clients and stops by itself', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'demo/demo.ts', '--duration', '8', '--clients', '30', '--base-port', '0'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const [code] = (await once(child, 'exit')) as [number | null];
    assert.equal(code, 0, out);
    const last = out.slice(out.lastIndexOf('t='));
    assert.match(last, /members=3 {2}sessions=30 {2}clients=30/, out.slice(-800));
    const rows = last.split('\n').filter((l) => /serving +up/.test(l));
    assert.equal(rows.length, 3, last);
    for (const row of rows) assert.ok(Number(row.split(/\s+/)[4]) > 0, `every instance has sessions: ${row}`);
  });
});
