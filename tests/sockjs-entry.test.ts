/**
 * The direct SockJS entry (server/sockjs-entry.ts, AttachOptions.sockjsEntry), with sockjs 0.3.24
 * installed exactly as Meteor's ddp-server installs it (examples/node-ddp-app): what the balancer
 * serves here goes straight into sockjs, past ddp-server's wrapper (which costs a module lookup per
 * request in a real bundle), and keeps webapp's timeout adjustment; pages and raw /websocket still
 * go through the app's listeners. tests/meteor.test.ts checks that a real Meteor 3.0.4 bundle
 * takes the direct entry.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { attach, type ClusterHandle } from '../lib/attach';
import { createDdpApp, type DdpApp } from '../examples/node-ddp-app/app';
import { rawSockjsPoll, rawXhrDdp, sockjsDdp, wsDdp } from '../examples/node-ddp-app/clients';
import { meteorSockjsEntry } from '../server/sockjs-entry';
import { TEST_SECRET } from './support/cluster';
import { mongo, uniqueDbUrl } from './support/mongo';

type Listener = (...args: unknown[]) => void;

/** Wraps the server's one listener for `event` (ddp-server's wrapper) so that its calls are counted. */
function countThrough(server: http.Server, event: 'request' | 'upgrade', urls: string[]): void {
  const [inner] = server.listeners(event) as Listener[];
  assert.ok(inner, `one ${event} listener`);
  server.removeAllListeners(event);
  server.on(event, function (this: http.Server, req: http.IncomingMessage, ...rest: unknown[]) {
    urls.push(`${event} ${req.url ?? ''}`);
    inner.call(this, req, ...rest);
  });
}

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    }).on('error', reject);
  });
}

describe('direct SockJS entry (past ddp-server\'s per-request wrapper)', () => {
  it('is offered only when Meteor\'s pieces have the shape it was written for', () => {
    const app = createDdpApp();
    assert.ok(meteorSockjsEntry(app.server, app.streamServer, app.timeoutAdjustment), 'the standard shape');
    assert.equal(meteorSockjsEntry(app.server, undefined, app.timeoutAdjustment), null, 'no stream server');
    assert.equal(meteorSockjsEntry(app.server, { server: {} }, app.timeoutAdjustment), null, 'a sockjs server without middleware()');
    assert.equal(meteorSockjsEntry(app.server, app.streamServer, undefined), null, 'no timeout adjustment');
    app.server.on('request', () => undefined);
    assert.equal(meteorSockjsEntry(app.server, app.streamServer, app.timeoutAdjustment), null, 'another request listener would be skipped');
  });

  describe('attached with it', function () {
    this.timeout(60_000);
    let app: DdpApp;
    let cluster: ClusterHandle;
    const through: string[] = [];
    let adjusted = 0;

    before(async () => {
      // A short socket timeout, as webapp's SHORT_SOCKET_TIMEOUT but quicker to outlast.
      app = createDdpApp({ instanceId: 'direct', shortSocketTimeout: 300 });
      await app.listen(0, '127.0.0.1');
      const entry = meteorSockjsEntry(app.server, app.streamServer, (req: http.IncomingMessage, res: http.ServerResponse) => {
        adjusted++;
        app.timeoutAdjustment(req, res);
      });
      assert.ok(entry);
      countThrough(app.server, 'request', through);
      countThrough(app.server, 'upgrade', through);
      cluster = attach(app.server, {
        endpointUrl: app.origin, sessionCount: () => app.sessionCount(), sockjsEntry: entry,
        env: { CLUSTER_DISCOVERY_URL: uniqueDbUrl(mongo().url, 'sockjs_entry'), CLUSTER_SECRET: TEST_SECRET, CLUSTER_INSTANCE_ID: 'direct', CLUSTER_LOG_LEVEL: 'error' },
      });
      await cluster.ready();
    });

    after(async () => {
      await cluster?.close();
      await app?.close();
    });

    it('says so in its stats', () => {
      assert.equal(cluster.stats().sockjsEntry, 'direct');
    });

    it('serves xhr-polling and sockjs websockets straight into sockjs, with webapp\'s timeout adjustment', async () => {
      through.length = 0;
      adjusted = 0;
      const xhr = await rawXhrDdp(() => `${app.url}/sockjs`);
      assert.equal(((await xhr.call('whoami')) as { instanceId: string }).instanceId, 'direct');
      const ws = await sockjsDdp(app.url, { transports: ['websocket'] });
      assert.equal(((await ws.call('whoami')) as { transport: string }).transport, 'websocket');
      await ws.close();
      assert.deepEqual(through.filter((u) => !u.startsWith('request /cluster/')), [], 'nothing of SockJS went through the wrapper');
      assert.ok(adjusted >= xhr.requests.length, `timeout adjusted on every xhr request (${adjusted} for ${xhr.requests.length})`);
    });

    it('holds a long poll past the server\'s short socket timeout, as Meteor does', async () => {
      const poll = rawSockjsPoll(`${app.url}/sockjs`);
      await poll.xhrOpen();
      const pending = poll.xhrPoll();
      // Longer than shortSocketTimeout (300 ms): without webapp's adjustment the socket is destroyed.
      await new Promise((r) => setTimeout(r, 900));
      assert.equal(await poll.xhrSend([JSON.stringify({ msg: 'connect', version: '1', support: ['1'] })]), 204);
      const frame = await pending;
      assert.equal(frame.type, 'a', `the held poll answered: ${JSON.stringify(frame)}`);
    });

    it('leaves pages and raw /websocket to the app\'s listeners (ddp-server rewrites /websocket)', async () => {
      through.length = 0;
      const page = await get(`${app.url}/some/page`);
      assert.equal(page.status, 200);
      const raw = await wsDdp(app.url);
      assert.equal(((await raw.call('whoami')) as { transport: string }).transport, 'websocket-raw');
      await raw.close();
      assert.deepEqual(through, ['request /some/page', 'upgrade /websocket']);
    });
  });
});
