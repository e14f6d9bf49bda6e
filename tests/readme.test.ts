import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CONFIG_ENV_VARS } from '../lib/config';

describe('README', () => {
  const readme = readFileSync('README.md', 'utf8');
  const table = readme.slice(readme.indexOf('## Configuration'));

  it('lists every environment variable the config reads, with a default and an example', () => {
    for (const name of CONFIG_ENV_VARS) {
      const row = table.split('\n').find((l) => l.startsWith(`| \`${name}\``));
      assert.ok(row, `README's configuration table has no row for ${name}`);
      assert.equal(row.split('|').length, 6, `${name}: columns are variable | default | example | meaning`);
    }
  });

  it('gives the two commands that set everything up', () => {
    assert.match(readme, /npm test/);
    assert.match(readme, /npm run demo/);
  });
});
