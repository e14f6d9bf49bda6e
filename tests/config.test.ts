import assert from 'node:assert/strict';
import { ConfigError, parseConfig, redactedConfig } from '../lib/config';

const SECRET = 'correct-horse-battery-staple';

function errorFor(env: Record<string, string>, options = {}): ConfigError {
  try {
    parseConfig(options, env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail(`expected ${JSON.stringify(env)} to be rejected`);
}

describe('config', () => {
  it('has working defaults with an empty environment', () => {
    const c = parseConfig({}, {});
    assert.equal(c.discoveryUrl, null);
    assert.equal(c.collection, 'clusterEndpoints');
    assert.equal(c.selfWeight, 1);
    assert.equal(c.heartbeatMs, 1000);
    assert.equal(c.dashboardPath, '/cluster');
    assert.equal(c.pathPrefix, '');
    assert.match(c.instanceId, /^[A-Za-z0-9_-]+$/);
    assert.ok(Object.isFrozen(c));
  });

  it('reads every meteorhacks:cluster variable', () => {
    const c = parseConfig({}, {
      CLUSTER_DISCOVERY_URL: 'mongodb://user:pw@db:27017/cluster',
      CLUSTER_SERVICE: 'web',
      CLUSTER_ENDPOINT_URL: 'http://10.0.0.5:3000/',
      CLUSTER_BALANCER_URL: 'https://b1.example.com',
      CLUSTER_SECRET: SECRET,
      CLUSTER_PUBLIC_SERVICES: 'search, chat ,search',
      CLUSTER_UI_SERVICE: 'web',
      CLUSTER_SELF_WEIGHT: '0.25',
    });
    assert.equal(c.service, 'web');
    assert.equal(c.endpointUrl, 'http://10.0.0.5:3000');
    assert.equal(c.balancerUrl, 'https://b1.example.com');
    assert.deepEqual(c.publicServices, ['search', 'chat']);
    assert.equal(c.selfWeight, 0.25);
  });

  it('lets JS options win over env vars, through the same parser', () => {
    const c = parseConfig({ service: 'api', selfWeight: 0, heartbeatMs: 2000 }, { CLUSTER_SERVICE: 'web', CLUSTER_SELF_WEIGHT: '1' });
    assert.equal(c.service, 'api');
    assert.equal(c.selfWeight, 0);
    assert.equal(c.heartbeatMs, 2000);
    const err = errorFor({}, { selfWeight: 3 });
    assert.match(err.variable, /options\.selfWeight \(CLUSTER_SELF_WEIGHT\)/);
  });

  it('parses durations with units', () => {
    assert.equal(parseConfig({}, { CLUSTER_HEARTBEAT_INTERVAL: '1.5s', CLUSTER_STALE_HORIZON: '1m' }).staleMs, 60_000);
    assert.equal(parseConfig({}, { CLUSTER_HEARTBEAT_INTERVAL: '1500' }).heartbeatMs, 1500);
  });

  const bad: [string, string, RegExp][] = [
    ['CLUSTER_ENDPOINT_URL', 'ftp://host:21', /http:\/\/ or https:\/\//],
    ['CLUSTER_ENDPOINT_URL', 'not a url', /absolute http\(s\) URL/],
    ['CLUSTER_ENDPOINT_URL', 'http://h:1/?q=1', /query string/],
    ['CLUSTER_BALANCER_URL', 'ws://host', /http:\/\/ or https:\/\//],
    ['CLUSTER_SELF_WEIGHT', '1.5', /0 \(only proxy\) to 1/],
    ['CLUSTER_SELF_WEIGHT', '-0.1', /0 \(only proxy\) to 1/],
    ['CLUSTER_SELF_WEIGHT', 'half', /0 \(only proxy\) to 1/],
    ['CLUSTER_SECRET', 'short', /at least 16 bytes/],
    ['CLUSTER_DISCOVERY_URL', 'redis://host', /MongoDB URL/],
    ['CLUSTER_SERVICE', 'bad name!', /letters, digits/],
    ['CLUSTER_PUBLIC_SERVICES', 'ok,no/slash', /letters, digits/],
    ['CLUSTER_HEARTBEAT_INTERVAL', '100', /at least 1000/],
    ['CLUSTER_HEARTBEAT_INTERVAL', 'soon', /at least 1000/],
    ['CLUSTER_CAPACITY', '0', /whole number/],
    ['CLUSTER_LOG_LEVEL', 'loud', /one of debug/],
    ['CLUSTER_DASHBOARD_PATH', '/a b', /plain segments/],
    ['CLUSTER_COLLECTION', 'system.users', /plain collection name/],
    ['CLUSTER_REBALANCE', 'maybe', /1 \(on, the default\) or 0 \(off\)/],
    ['CLUSTER_REBALANCE_RATE', '0', /per second per member.*CLUSTER_REBALANCE=0/],
    ['CLUSTER_REBALANCE_RATE', 'fast', /per second per member/],
    ['CLUSTER_REBALANCE_TOLERANCE', '0', /0\.01 to 10.*10%/],
    ['CLUSTER_REBALANCE_TOLERANCE', 'lots', /0\.01 to 10/],
    ['CLUSTER_REBALANCE_TOLERANCE_SESSIONS', '0', /whole number from 1/],
    ['CLUSTER_REBALANCE_MIN_AGE', 'old', /milliseconds/],
  ];
  for (const [variable, value, fix] of bad) {
    it(`rejects ${variable}=${JSON.stringify(value)} naming the variable and the fix`, () => {
      const err = errorFor({ [variable]: value });
      assert.equal(err.variable, variable);
      assert.match(err.message, new RegExp(`^${variable}=`));
      assert.match(err.fix, fix);
    });
  }

  it('reads the rebalancing variables, on by default with conservative limits', () => {
    const d = parseConfig({}, {});
    assert.deepEqual([d.rebalance, d.rebalanceRate, d.rebalanceTolerance, d.rebalanceToleranceSessions, d.rebalanceMinAgeMs], [true, 5, 0.1, 10, 60_000]);
    const c = parseConfig({}, {
      CLUSTER_REBALANCE: 'off', CLUSTER_REBALANCE_RATE: '2.5', CLUSTER_REBALANCE_TOLERANCE: '20%',
      CLUSTER_REBALANCE_TOLERANCE_SESSIONS: '50', CLUSTER_REBALANCE_MIN_AGE: '5m',
    });
    assert.deepEqual([c.rebalance, c.rebalanceRate, c.rebalanceTolerance, c.rebalanceToleranceSessions, c.rebalanceMinAgeMs], [false, 2.5, 0.2, 50, 300_000]);
    assert.equal(parseConfig({}, { CLUSTER_REBALANCE: '0' }).rebalance, false);
  });

  it('rejects a stale horizon shorter than two heartbeats', () => {
    const err = errorFor({ CLUSTER_HEARTBEAT_INTERVAL: '2000', CLUSTER_STALE_HORIZON: '3000' });
    assert.equal(err.variable, 'CLUSTER_STALE_HORIZON');
  });

  it('rejects a previous secret without a current one', () => {
    assert.equal(errorFor({ CLUSTER_SECRET_PREVIOUS: SECRET }).variable, 'CLUSTER_SECRET_PREVIOUS');
  });

  it('never puts a secret in an error or the redacted config', () => {
    const err = errorFor({ CLUSTER_SECRET: 'tooshort-secret' });
    assert.ok(!err.message.includes('tooshort-secret'));
    assert.match(err.message, /redacted, 15 bytes/);
    const c = parseConfig({}, { CLUSTER_SECRET: SECRET, CLUSTER_DISCOVERY_URL: 'mongodb://u:hunter22@db/x' });
    const shown = JSON.stringify(redactedConfig(c));
    assert.ok(!shown.includes(SECRET) && !shown.includes('hunter22'), shown);
  });
});
