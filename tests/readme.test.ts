import { MAX_TRANSLATED } from '../lib/balancer/translate';
import { MAX_CARRIED } from '../lib/balancer/carried';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { MAX_PENDING, SESSION_TABLE_MAX } from '../lib/balancer/gateway';
import { HOP_WINDOW_MS, REPLAY_MAX } from '../lib/balancer/hop';
import { CONFIG_ENV_VARS } from '../lib/config';
import { LOCAL_POLLS_MAX } from '../lib/local-sessions';
import { ONCE_MAX_KEYS } from '../lib/log';
import { METRIC_NAMES } from '../lib/metrics';
import { ERROR_CODES } from '../lib/outcomes';

/** The README section under `heading` (up to the next heading of the same or a higher level). */
function section(readme: string, heading: string): string {
  const start = readme.indexOf(`\n${heading}\n`);
  assert.ok(start !== -1, `README has a section "${heading}"`);
  const level = heading.indexOf(' ');
  const rest = readme.slice(start + heading.length + 2);
  const end = rest.search(new RegExp(`\\n#{1,${level}} `));
  return end === -1 ? rest : rest.slice(0, end);
}

const n = (v: number): string => v.toLocaleString('en-US');

describe('README', () => {
  const readme = readFileSync('README.md', 'utf8');
  const table = readme.slice(readme.indexOf('## Configuration'));
  const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { scripts: Record<string, string>; dependencies: Record<string, string> };

  it('lists every environment variable the config reads, with a default and an example', () => {
    for (const name of CONFIG_ENV_VARS) {
      const row = table.split('\n').find((l) => l.startsWith(`| \`${name}\``));
      assert.ok(row, `README's configuration table has no row for ${name}`);
      assert.equal(row.split('|').length, 6, `${name}: columns are variable | default | example | meaning`);
    }
  });

  it('gives set-up commands that exist: npm test and npm run demo are package scripts', () => {
    const setup = section(readme, '## Set up on a fresh machine');
    assert.match(setup, /^npm test\b/m);
    assert.match(setup, /npm run demo\b/);
    assert.ok(pkg.scripts.test && pkg.scripts.demo, 'package.json has the test and demo scripts');
    assert.match(readme, /MOCHA_SPEC=tests\/route\.test\.ts,tests\/classify\.test\.ts npx mocha/);
  });

  it('documents every error code, and documents no code that does not exist', () => {
    const errors = section(readme, '### Error codes');
    const documented = [...errors.matchAll(/^\| `(DDPC_ERR_[A-Z_]+)`/gm)].map((m) => m[1]);
    assert.deepEqual(documented.sort(), Object.keys(ERROR_CODES).sort());
  });

  it('documents every Prometheus metric the instances expose', () => {
    const metrics = section(readme, '### Prometheus metrics');
    // The table abbreviates a row's further names to a suffix: `ddp_cluster_member_sessions`, `_capacity`.
    const rows = metrics.split('\n').filter((l) => l.startsWith('| `ddp_cluster_'));
    const documented = new Set<string>();
    for (const row of rows) {
      const names = [...(row.split('|')[1] ?? '').matchAll(/`([a-z_]+)`/g)].map((m) => m[1] as string);
      const first = names[0] as string;
      documented.add(first);
      const parts = first.split('_');
      for (const suffix of names.slice(1)) {
        if (suffix.startsWith('ddp_cluster_')) documented.add(suffix);
        else for (let k = 2; k < parts.length; k++) documented.add(parts.slice(0, k).join('_') + suffix);
      }
    }
    for (const name of METRIC_NAMES) assert.ok(documented.has(name), `${name} is not in README's metrics table`);
  });

  it('states the caps the code enforces', () => {
    const resilience = section(readme, '## Resilience');
    assert.ok(resilience.includes(`session table (${n(SESSION_TABLE_MAX)})`), 'session table cap');
    assert.ok(resilience.includes(`hop replay cache (${n(REPLAY_MAX)}`), 'replay cache cap');
    assert.ok(resilience.includes(`fallback poll table (${n(LOCAL_POLLS_MAX)}`), 'poll table cap');
    assert.ok(resilience.includes(`"log once" keys (${n(ONCE_MAX_KEYS)}`), 'log-once cap');
    assert.ok(resilience.includes(`waiting for a peer (${n(MAX_PENDING)}, then 503)`), 'pending proxies cap');
    assert.ok(resilience.includes(`polling sessions an entry carries (${n(MAX_TRANSLATED)}`), 'translated sessions cap');
    assert.ok(resilience.includes(`sessions a member takes carried (${n(MAX_CARRIED)}`), 'carried sessions cap');
    assert.match(readme, new RegExp(`${HOP_WINDOW_MS / 1000} s window`), 'hop window');
  });

  it('says package.js pins exactly the npm dependencies Meteor needs at run time', () => {
    const packageJs = readFileSync('package.js', 'utf8');
    const depends = /Npm\.depends\(\{([^}]*)\}\)/.exec(packageJs)?.[1] ?? '';
    const pinned = Object.fromEntries([...depends.matchAll(/'?([@a-z0-9/-]+)'?:\s*'([^']+)'/g)].map((m) => [m[1], m[2]]));
    // What lib/ and server/ import at run time, minus what only the CLI needs.
    const runtime = Object.fromEntries(Object.entries(pkg.dependencies).filter(([name]) => name !== 'commander'));
    assert.deepEqual(pinned, runtime);
  });
});
