/**
 * The Meteor-like fixture (examples/node-ddp-app/app.ts) and the real clients
 * (examples/node-ddp-app/clients.ts) behave like a Meteor 3 server and its clients.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import WebSocket from 'ws';
import { createDdpApp, meteorClientAddress, type DdpApp, type DdpAppOptions, type WhoamiResult } from '../examples/node-ddp-app/app';
import {
  DdpError,
  getSockjsInfo,
  httpRequest,
  rawSockjsPoll,
  rawXhrDdp,
  simpleDdp,
  sockjsDdp,
  withTimeout,
  wsDdp,
  type DdpClient,
} from '../examples/node-ddp-app/clients';

const apps: DdpApp[] = [];
const clients: DdpClient[] = [];

async function startApp(opts: DdpAppOptions = {}): Promise<DdpApp> {
  const app = createDdpApp(opts);
  apps.push(app);
  await app.listen();
  return app;
}

function track<T extends DdpClient>(client: T): T {
  clients.push(client);
  return client;
}

function isWhoami(value: unknown): value is WhoamiResult {
  return typeof value === 'object' && value !== null && 'instanceId' in value && 'sessionId' in value;
}

async function whoami(client: DdpClient): Promise<WhoamiResult> {
  const result = await client.call('whoami');
  assert.ok(isWhoami(result), `whoami returned ${JSON.stringify(result)}`);
  return result;
}

/** Resolves when the app's DDP session `id` closes (Meteor's connection.onClose). */
function sessionClosed(app: DdpApp, id: string): Promise<void> {
  const handle = app.sessions.get(id);
  assert.ok(handle, `no session ${id} on ${app.instanceId}`);
  return withTimeout(new Promise<void>((resolve) => handle.onClose(resolve)), 5000, `session ${id} close`);
}

/** Resolves with the next DDP connection handle the app registers. */
function nextConnection(app: DdpApp): Promise<string> {
  return withTimeout(
    new Promise<string>((resolve) => {
      const hook = app.onConnection((handle) => {
        hook.stop();
        resolve(handle.id);
      });
    }),
    5000,
    'onConnection',
  );
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => {})));
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

describe('ddp-app fixture (Meteor 3 lookalike)', () => {
  describe('HTTP surface', () => {
    it('answers /sockjs/info like sockjs 0.3.24 with Meteor options', async () => {
      const app = await startApp();
      const info = await getSockjsInfo(`${app.url}/sockjs`);
      assert.equal(info.websocket, true);
      assert.deepEqual(info.origins, ['*:*']);
      assert.equal(info.cookie_needed, false);
      assert.equal(typeof info.entropy, 'number');
    });

    it('reports websocket:false with disableWebsockets and cookie_needed with useJsessionid', async () => {
      const app = await startApp({ disableWebsockets: true, useJsessionid: true });
      const info = await getSockjsInfo(`${app.url}/sockjs`);
      assert.equal(info.websocket, false);
      assert.equal(info.cookie_needed, true);
    });

    it('serves non-sockjs paths from the app fallback', async () => {
      const app = await startApp({ instanceId: 'alpha' });
      const res = await httpRequest('GET', `${app.url}/some/page?x=1`);
      assert.equal(res.status, 200);
      assert.equal(res.body, 'app alpha /some/page?x=1');
    });

    it('leaves exactly one request and one upgrade listener, like ddp-server', async () => {
      const app = await startApp();
      assert.equal(app.server.listenerCount('request'), 1);
      assert.equal(app.server.listenerCount('upgrade'), 1);
      assert.equal(app.server.timeout, 5000);
    });
  });

  describe('DDP over every client', () => {
    it('sockjs-client xhr-polling: connect, whoami, echo', async () => {
      const app = await startApp({ instanceId: 'xhr-app' });
      const client = track(await sockjsDdp(app.url, { transports: ['xhr-polling'] }));
      assert.equal(client.transportName, 'xhr-polling');
      assert.match(client.transportUrl ?? '', new RegExp(`^${app.url}/sockjs/\\d+/[a-z0-9]+$`));
      assert.equal(client.baseUrl, `${app.url}/sockjs`);
      const me = await whoami(client);
      assert.equal(me.instanceId, 'xhr-app');
      assert.equal(me.sessionId, client.sessionId);
      assert.equal(me.transport, 'xhr-polling');
      assert.equal(me.clientAddress, '127.0.0.1');
      assert.deepEqual(await client.call('echo', { a: [1, 'two'] }), { a: [1, 'two'] });
    });

    it('sockjs-client websocket', async () => {
      const app = await startApp({ instanceId: 'ws-app' });
      const client = track(await sockjsDdp(app.url, { transports: ['websocket'] }));
      assert.equal(client.transportName, 'websocket');
      assert.match(client.transportUrl ?? '', /^ws:\/\/127\.0\.0\.1:\d+\/sockjs\/\d+\/[a-z0-9]+\/websocket$/);
      const me = await whoami(client);
      assert.equal(me.instanceId, 'ws-app');
      assert.equal(me.transport, 'websocket');
    });

    it('raw /websocket with ws', async () => {
      const app = await startApp({ instanceId: 'raw-app' });
      const client = track(await wsDdp(app.url));
      assert.equal(client.transportUrl, `ws://127.0.0.1:${app.port}/websocket`);
      const me = await whoami(client);
      assert.equal(me.instanceId, 'raw-app');
      assert.equal(me.transport, 'websocket-raw');
      assert.equal(me.sessionId, client.sessionId);
    });

    it('simpleddp over ws', async () => {
      const app = await startApp({ instanceId: 'simple-app' });
      const client = track(await simpleDdp(app.url));
      const me = await whoami(client);
      assert.equal(me.instanceId, 'simple-app');
      assert.equal(me.sessionId, client.sessionId);
      assert.equal(await client.call('echo', 'hi'), 'hi');
    });

    it('subscription "items" delivers 3 docs on each client', async () => {
      const app = await startApp({ instanceId: 'sub-app' });
      const all = [
        await sockjsDdp(app.url, { transports: ['xhr-polling'] }),
        await sockjsDdp(app.url, { transports: ['websocket'] }),
        await wsDdp(app.url),
        await simpleDdp(app.url),
      ].map(track);
      for (const client of all) {
        const docs = await client.subscribe('items');
        assert.equal(docs.length, 3);
        assert.deepEqual(
          docs.map((d) => [d.collection, d.fields.n, d.fields.instanceId]),
          [0, 1, 2].map((n) => ['items', n, 'sub-app']),
        );
      }
    });

    it('unknown method → Meteor.Error 404; unknown publication → nosub 404', async () => {
      const app = await startApp();
      const client = track(await wsDdp(app.url));
      await assert.rejects(client.call('nope'), (err: unknown) => {
        assert.ok(err instanceof DdpError);
        assert.equal(err.error, 404);
        assert.equal(err.reason, "Method 'nope' not found");
        return true;
      });
      await assert.rejects(client.subscribe('nothing'), (err: unknown) => err instanceof DdpError && err.error === 404);
    });

    it('slow runs methods in order like Meteor (no unblock)', async () => {
      const app = await startApp();
      const client = track(await wsDdp(app.url));
      const order: string[] = [];
      const slow = client.call('slow', 150).then(() => order.push('slow'));
      const echo = client.call('echo', 'fast').then(() => order.push('echo'));
      await Promise.all([slow, echo]);
      assert.deepEqual(order, ['slow', 'echo']);
    });

    it('clients skip the legacy {server_id:"0"} greeting when it is enabled', async () => {
      const app = await startApp({ sendServerIdWelcome: true });
      const client = track(await sockjsDdp(app.url, { transports: ['websocket'] }));
      assert.equal((await whoami(client)).sessionId, client.sessionId);
    });

    it('refuses a DDP version the client does not prefer, like Meteor', async () => {
      const app = await startApp();
      const ws = new WebSocket(`ws://127.0.0.1:${app.port}/websocket`);
      const reply = withTimeout(
        new Promise<unknown>((resolve) => ws.once('message', (data: WebSocket.RawData) => resolve(JSON.parse(data.toString())))),
        5000,
        'failed reply',
      );
      await withTimeout(new Promise((resolve) => ws.once('open', resolve)), 5000, 'ws open');
      ws.send(JSON.stringify({ msg: 'connect', version: 'pre1', support: ['1', 'pre1'] }));
      assert.deepEqual(await reply, { msg: 'failed', version: '1' });
      ws.terminate();
    });
  });

  describe('clientAddress (HTTP_FORWARDED_COUNT)', () => {
    it('count 0 → socket address, ignoring x-forwarded-for', async () => {
      const app = await startApp({ httpForwardedCount: 0 });
      const client = track(await wsDdp(app.url, { headers: { 'x-forwarded-for': '203.0.113.9' } }));
      const me = await whoami(client);
      assert.equal(me.clientAddress, '127.0.0.1');
      assert.equal(me.httpHeaders['x-forwarded-for'], '203.0.113.9');
    });

    it('count 1 → last x-forwarded-for entry; null without the header', async () => {
      const app = await startApp({ httpForwardedCount: 1 });
      const withHeader = track(await wsDdp(app.url, { headers: { 'x-forwarded-for': '198.51.100.1, 203.0.113.9' } }));
      assert.equal((await whoami(withHeader)).clientAddress, '203.0.113.9');
      const without = track(await wsDdp(app.url));
      assert.equal((await whoami(without)).clientAddress, null);
    });

    it('count 2 → second from the end; too few entries → null', async () => {
      const app = await startApp({ httpForwardedCount: 2 });
      const two = track(await wsDdp(app.url, { headers: { 'x-forwarded-for': '198.51.100.1 , 203.0.113.9' } }));
      assert.equal((await whoami(two)).clientAddress, '198.51.100.1');
      const one = track(await wsDdp(app.url, { headers: { 'x-forwarded-for': '203.0.113.9' } }));
      assert.equal((await whoami(one)).clientAddress, null);
    });

    it('meteorClientAddress matches livedata_server.js', () => {
      assert.equal(meteorClientAddress('10.0.0.1', {}, 0), '10.0.0.1');
      assert.equal(meteorClientAddress('10.0.0.1', { 'x-forwarded-for': 'a, b, c' }, 1), 'c');
      assert.equal(meteorClientAddress('10.0.0.1', { 'x-forwarded-for': 'a, b, c' }, 3), 'a');
      assert.equal(meteorClientAddress('10.0.0.1', { 'x-forwarded-for': 'a, b, c' }, 4), null);
      assert.equal(meteorClientAddress('10.0.0.1', { 'x-forwarded-for': 'a' }, -1), null);
      assert.equal(meteorClientAddress('10.0.0.1', {}, 1), null);
    });
  });

  describe('raw xhr-polling helpers', () => {
    it('drive a DDP session by hand, one HTTP request at a time', async () => {
      const app = await startApp({ instanceId: 'raw-xhr' });
      const base = `${app.url}/sockjs`;
      const session = await rawXhrDdp(() => base);
      const me = await session.call('whoami');
      assert.ok(isWhoami(me));
      assert.equal(me.instanceId, 'raw-xhr');
      assert.equal(me.sessionId, session.sessionId);
      assert.equal(me.transport, 'xhr-polling');
      assert.deepEqual(
        session.requests.map((r) => r.step).slice(0, 3),
        ['open', 'send', 'poll'],
      );
    });

    it('xhr_send to an unknown session is 404; the session table is per app', async () => {
      const a = await startApp({ instanceId: 'a' });
      const b = await startApp({ instanceId: 'b' });
      const poll = rawSockjsPoll(`${a.url}/sockjs`);
      await poll.xhrOpen();
      assert.equal(await poll.xhrSend(['x'], `${b.url}/sockjs`), 404, 'b must not see a session opened on a');
      assert.equal(await poll.xhrSend([JSON.stringify({ msg: 'connect', version: '1', support: ['1'] })]), 204);
      const frame = await poll.xhrPoll();
      assert.equal(frame.type, 'a');
      assert.match(frame.type === 'a' ? (frame.messages[0] ?? '') : '', /"msg":"connected"/);
    });

    it('sockjs accepts any server_id/session_id segment without "/" or "."; it owns all of /sockjs/', async () => {
      const app = await startApp();
      const base = `${app.url}/sockjs`;
      await rawSockjsPoll(base, 'not-a-number', 'x').xhrOpen();
      const dotted = await httpRequest('POST', `${base}/1.2/abc/xhr`);
      assert.equal(dotted.status, 404, 'no sockjs route, and sockjs never passes /sockjs/* on to the app');
      assert.equal(dotted.body, '404 Error: Page not found\n');
    });
  });

  describe('sessions and shutdown', () => {
    it('sessionCount goes up and down; onConnection and onClose fire', async () => {
      const app = await startApp();
      const connected = nextConnection(app);
      const ws = track(await wsDdp(app.url));
      assert.equal(await connected, ws.sessionId);
      const xhr = track(await sockjsDdp(app.url, { transports: ['xhr-polling'] }));
      assert.equal(app.sessionCount(), 2);
      assert.deepEqual([...app.sessions.keys()].sort(), [ws.sessionId, xhr.sessionId].sort());

      const wsGone = sessionClosed(app, ws.sessionId);
      await ws.close();
      await wsGone;
      assert.equal(app.sessionCount(), 1);

      // Closing an xhr-polling client aborts its pending poll; sockjs ends the session at once.
      const xhrGone = sessionClosed(app, xhr.sessionId);
      await xhr.close();
      await xhrGone;
      assert.equal(app.sessionCount(), 0);
    });

    it('connection handle close() disconnects the client', async () => {
      const app = await startApp();
      const client = track(await sockjsDdp(app.url, { transports: ['websocket'] }));
      app.sessions.get(client.sessionId)?.close();
      const info = await withTimeout(client.closed, 5000, 'client close');
      assert.equal(info.code, 1000);
      assert.equal(app.sessionCount(), 0);
    });

    it('close() resolves quickly with every kind of client still connected', async () => {
      const app = await startApp();
      const connected = [
        await sockjsDdp(app.url, { transports: ['xhr-polling'] }),
        await sockjsDdp(app.url, { transports: ['websocket'] }),
        await wsDdp(app.url),
        await simpleDdp(app.url),
      ].map(track);
      const idle = rawSockjsPoll(`${app.url}/sockjs`);
      await idle.xhrOpen(); // an xhr session with no poll pending (would linger disconnect_delay)
      const hanging = new WebSocket(`ws://127.0.0.1:${app.port}/not-sockjs`); // upgrade nobody answers
      hanging.on('error', () => {});
      const pendingPoll = httpRequest('POST', `${idle.sessionUrl()}/xhr`).catch((err: unknown) => err);
      assert.equal(app.sessionCount(), 4);

      const started = Date.now();
      await app.close();
      assert.ok(Date.now() - started < 1000, `close took ${Date.now() - started} ms`);
      assert.equal(app.sessionCount(), 0);
      await withTimeout(Promise.all(connected.map((c) => c.closed)), 5000, 'clients notice');
      await pendingPoll;
      assert.equal(app.server.listening, false);
    });
  });

  describe('ROOT_URL_PATH_PREFIX', () => {
    it('moves /sockjs and /websocket under the prefix', async () => {
      const app = await startApp({ rootUrlPathPrefix: '/myapp/', instanceId: 'prefixed' });
      assert.equal(app.url, `http://127.0.0.1:${app.port}/myapp`);
      assert.equal((await getSockjsInfo(`${app.url}/sockjs`)).websocket, true);

      const unprefixed = await httpRequest('GET', `${app.origin}/sockjs/info`);
      assert.equal(unprefixed.body, 'app prefixed /sockjs/info', 'not sockjs without the prefix');

      const xhr = track(await sockjsDdp(app.url, { transports: ['xhr-polling'] }));
      assert.equal((await whoami(xhr)).instanceId, 'prefixed');
      const raw = track(await wsDdp(app.url));
      assert.equal((await whoami(raw)).transport, 'websocket-raw');
      const simple = track(await simpleDdp(app.url));
      assert.equal((await whoami(simple)).instanceId, 'prefixed');
    });
  });

  describe('sockjs-client follows base_url from /info', () => {
    /** A front server that answers only /sockjs/info, pointing clients at `target`. */
    async function infoOnlyFront(target: DdpApp): Promise<{ url: string; hits: string[]; close(): Promise<void> }> {
      const hits: string[] = [];
      const server = http.createServer((req, res) => {
        hits.push(req.url ?? '');
        if (req.url?.startsWith('/sockjs/info')) {
          const body = JSON.stringify({ websocket: true, origins: ['*:*'], cookie_needed: false, entropy: 1, base_url: `${target.url}/sockjs` });
          res.writeHead(200, { 'content-type': 'application/json; charset=UTF-8' });
          return res.end(body);
        }
        res.writeHead(404);
        res.end();
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const addr = server.address();
      assert.ok(addr !== null && typeof addr === 'object');
      return {
        url: `http://127.0.0.1:${addr.port}`,
        hits,
        close: () => {
          server.closeAllConnections();
          return new Promise<void>((resolve) => server.close(() => resolve()));
        },
      };
    }

    for (const transport of ['xhr-polling', 'websocket']) {
      it(`stock sockjs-client 1.6.1 runs the ${transport} session on base_url`, async () => {
        const target = await startApp({ instanceId: 'pinned' });
        const front = await infoOnlyFront(target);
        try {
          const client = track(await sockjsDdp(front.url, { transports: [transport] }));
          assert.equal(client.info?.base_url, `${target.url}/sockjs`);
          assert.equal(client.baseUrl, `${target.url}/sockjs`);
          assert.ok(client.transportUrl?.includes(`127.0.0.1:${target.port}/sockjs/`), client.transportUrl);
          assert.equal((await whoami(client)).instanceId, 'pinned');
          assert.deepEqual(front.hits, ['/sockjs/info']);
        } finally {
          await front.close();
        }
      });
    }
  });
});
