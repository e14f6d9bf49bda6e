import assert from 'node:assert/strict';
import { MongoClient } from 'mongodb';
import { EnvServer, mongo, startMongo, uniqueDbUrl, type MongoServer } from './support/mongo';

interface Doc {
  _id: string;
  n: number;
}

async function withClient<T>(url: string, fn: (client: MongoClient) => Promise<T>, timeoutMs = 5000): Promise<T> {
  const client = new MongoClient(url, { serverSelectionTimeoutMS: timeoutMs, connectTimeoutMS: timeoutMs });
  try {
    await client.connect();
    return await fn(client);
  } finally {
    await client.close().catch(() => undefined);
  }
}

describe('mongo test harness', function () {
  this.timeout(120_000);

  it('gives a URL that answers ping', async function () {
    const server = mongo();
    assert.match(server.url, /^mongodb(\+srv)?:\/\//);
    assert.equal(process.env.CLUSTER_TEST_MONGO_URL_RESOLVED, server.url);
    const res = await withClient(server.url, (c) => c.db('admin').command({ ping: 1 }));
    assert.equal(res.ok, 1);
  });

  // The shared server is controllable unless it came from CLUSTER_TEST_MONGO_URL; then these
  // tests spawn one of their own (mongod or FerretDB) rather than skip.
  let own: MongoServer | null = null;
  const controllable = async (): Promise<MongoServer> => {
    if (mongo().controllable) return mongo();
    own ??= await startMongo({ local: true });
    assert.ok(own.controllable, 'a spawned server is controllable');
    return own;
  };
  after(async () => {
    await own?.stop().catch(() => undefined);
  });

  it('refuses stop(), start() and restart() on a server given by CLUSTER_TEST_MONGO_URL', async function () {
    const env = new EnvServer('mongodb://127.0.0.1:1/x');
    assert.equal(env.controllable, false);
    await assert.rejects(env.stop(), /not controllable/);
    await assert.rejects(env.start(), /not controllable/);
    await assert.rejects(env.restart(), /not controllable/);
  });

  it('keeps data across stop() + start(), and refuses connections while stopped', async function () {
    const server = await controllable();
    const url = uniqueDbUrl(server.url, 'harness_restart');
    await withClient(url, (c) => c.db().collection<Doc>('docs').insertOne({ _id: 'kept', n: 42 }));

    await server.stop();
    try {
      await assert.rejects(withClient(url, (c) => c.db().command({ ping: 1 }), 1000));
    } finally {
      await server.start();
    }

    const doc = await withClient(url, (c) => c.db().collection<Doc>('docs').findOne({ _id: 'kept' }));
    assert.equal(doc?.n, 42);
    await withClient(url, (c) => c.db().dropDatabase());
  });

  it('restart() brings the server back on the same URL', async function () {
    const server = await controllable();
    const before = server.url;
    await server.restart();
    assert.equal(server.url, before);
    const res = await withClient(server.url, (c) => c.db('admin').command({ ping: 1 }));
    assert.equal(res.ok, 1);
  });
});

describe('uniqueDbUrl', function () {
  const dbOf = (url: string): string => /^mongodb(?:\+srv)?:\/\/[^/]*\/([^?]*)/.exec(url)?.[1] ?? '';

  it('adds a database to a URL without path', function () {
    const url = uniqueDbUrl('mongodb://127.0.0.1:27017', 'discovery');
    assert.match(url, /^mongodb:\/\/127\.0\.0\.1:27017\/test_discovery_[0-9a-f]{8}$/);
  });

  it('replaces the database of a URL with a bare or named path', function () {
    assert.match(uniqueDbUrl('mongodb://h:1/', 'a'), /^mongodb:\/\/h:1\/test_a_[0-9a-f]{8}$/);
    assert.match(uniqueDbUrl('mongodb://h:1/meteor', 'a'), /^mongodb:\/\/h:1\/test_a_[0-9a-f]{8}$/);
  });

  it('keeps the query string', function () {
    assert.match(uniqueDbUrl('mongodb://h:1/db?replicaSet=rs0&w=1', 'q'), /^mongodb:\/\/h:1\/test_q_[0-9a-f]{8}\?replicaSet=rs0&w=1$/);
    assert.match(uniqueDbUrl('mongodb://h:1?directConnection=true', 'q'), /^mongodb:\/\/h:1\/test_q_[0-9a-f]{8}\?directConnection=true$/);
  });

  it('handles multiple hosts and mongodb+srv', function () {
    assert.match(uniqueDbUrl('mongodb://a:1,b:2,c:3/x', 'm'), /^mongodb:\/\/a:1,b:2,c:3\/test_m_[0-9a-f]{8}$/);
    assert.match(uniqueDbUrl('mongodb+srv://cluster.example.net/', 'm'), /^mongodb\+srv:\/\/cluster\.example\.net\/test_m_/);
  });

  it('keeps authenticating against the original path database', function () {
    const url = uniqueDbUrl('mongodb://u:p@h:1/admin?tls=true', 'auth');
    assert.match(url, /^mongodb:\/\/u:p@h:1\/test_auth_[0-9a-f]{8}\?tls=true&authSource=admin$/);
    assert.match(uniqueDbUrl('mongodb://u:p@h:1/admin?authSource=other', 'auth'), /\?authSource=other$/);
    assert.match(uniqueDbUrl('mongodb://u:p@h:1/', 'auth'), /\/test_auth_[0-9a-f]{8}$/);
  });

  it('sanitizes names and makes every call unique', function () {
    const a = dbOf(uniqueDbUrl('mongodb://h', 'my suite/with.dots-and-dashes'));
    assert.match(a, /^test_my_suite_with_dots_and_dashes_[0-9a-f]{8}$/);
    assert.ok(dbOf(uniqueDbUrl('mongodb://h', 'x'.repeat(200))).length <= 63);
    assert.notEqual(uniqueDbUrl('mongodb://h', 'same'), uniqueDbUrl('mongodb://h', 'same'));
  });

  it('rejects non-mongodb URLs', function () {
    assert.throws(() => uniqueDbUrl('http://h/db', 'x'), /Not a mongodb/);
  });
});
