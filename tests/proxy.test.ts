import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { HOP_HEADER } from '../lib/balancer/hop';
import { Forwarder, PEER_IDLE_MS } from '../lib/balancer/proxy';
import { httpRequest } from '../examples/node-ddp-app/clients';
import { eventually } from './support/wait';

describe('Forwarder (real sockets)', function () {
  this.timeout(30_000);

  it(`closes a kept-alive connection to a peer after ${PEER_IDLE_MS} ms idle instead of waiting for the peer to`, async () => {
    // A peer that would keep idle connections for a minute (Meteor: 5 s).
    const peer = http.createServer((_req, res) => res.end('peer'));
    peer.keepAliveTimeout = 60_000;
    peer.listen(0, '127.0.0.1');
    await once(peer, 'listening');
    const forwarder = new Forwarder();
    const target = new URL(`http://127.0.0.1:${(peer.address() as AddressInfo).port}`);
    const front = http.createServer((req, res) => {
      forwarder.web(req, res, { target, headers: {}, timeoutMs: 10_000, body: null, fresh: false }, () => res.destroy());
    });
    front.listen(0, '127.0.0.1');
    await once(front, 'listening');
    const connections = (): Promise<number> => new Promise((resolve) => peer.getConnections((_e, n) => resolve(n)));
    try {
      const r = await httpRequest('GET', `http://127.0.0.1:${(front.address() as AddressInfo).port}/x`, undefined, { headers: { connection: 'keep-alive' } });
      assert.equal(r.body, 'peer');
      assert.equal(await connections(), 1, 'kept alive after the answer');
      // The peer would keep it for a minute: if it closes within 10 s, the balancer closed it.
      await eventually(async () => (await connections()) === 0, 'the balancer closes the idle connection', 10_000, 100);
    } finally {
      forwarder.close();
      front.close();
      peer.closeAllConnections();
      peer.close();
    }
  });

  /** A peer and a front that forwards every request to it through one Forwarder. */
  async function pair(handler: http.RequestListener, setCookie: string | null = null) {
    const peer = http.createServer(handler);
    peer.listen(0, '127.0.0.1');
    await once(peer, 'listening');
    const forwarder = new Forwarder();
    const target = new URL(`http://127.0.0.1:${(peer.address() as AddressInfo).port}`);
    const failures: string[] = [];
    const front = http.createServer((req, res) => {
      forwarder.web(req, res, { target, headers: { 'x-added': 'yes' }, timeoutMs: 10_000, body: null, fresh: false, setCookie }, (err, touched) => {
        failures.push(`${(err as { code?: string }).code ?? err.message} touched=${touched}`);
        if (touched) res.destroy();
        else res.writeHead(502).end();
      });
    });
    front.listen(0, '127.0.0.1');
    await once(front, 'listening');
    return {
      url: `http://127.0.0.1:${(front.address() as AddressInfo).port}`,
      failures,
      close(): void {
        forwarder.close();
        front.closeAllConnections();
        front.close();
        peer.closeAllConnections();
        peer.close();
      },
    };
  }

  it('passes the client\'s headers and body on, adds its own, and never passes a client\'s hop header', async () => {
    const p = await pair((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => res.end(JSON.stringify({ headers: req.headers, body, url: req.url, method: req.method })));
    });
    try {
      const r = await httpRequest('POST', `${p.url}/sockjs/1/abc/xhr_send?x=1`, '["a"]', {
        headers: { 'content-type': 'text/plain', [HOP_HEADER]: 'forged.sig', cookie: 'a=1', origin: 'http://app' },
      });
      const seen = JSON.parse(r.body) as { headers: Record<string, string>; body: string; url: string; method: string };
      assert.equal(seen.method, 'POST');
      assert.equal(seen.url, '/sockjs/1/abc/xhr_send?x=1');
      assert.equal(seen.body, '["a"]');
      assert.equal(seen.headers.cookie, 'a=1');
      assert.equal(seen.headers.origin, 'http://app');
      assert.equal(seen.headers['x-added'], 'yes');
      assert.equal(seen.headers[HOP_HEADER], undefined, 'the client\'s hop header is not forwarded');
    } finally {
      p.close();
    }
  });

  it('relays the peer\'s status and every Set-Cookie, and appends its own cookie to them', async () => {
    const p = await pair((_req, res) => {
      res.writeHead(201, { 'set-cookie': ['a=1', 'b=2'], 'access-control-allow-origin': 'http://app', 'content-type': 'text/plain' });
      res.end('ok');
    }, 'ui=3');
    try {
      const r = await fetch(`${p.url}/page`);
      assert.equal(r.status, 201);
      assert.deepEqual(r.headers.getSetCookie(), ['a=1', 'b=2', 'ui=3']);
      assert.equal(r.headers.get('access-control-allow-origin'), 'http://app');
      assert.equal(await r.text(), 'ok');
    } finally {
      p.close();
    }
  });

  it('streams an answer unbuffered: the first chunk reaches the client before the peer ends it', async () => {
    let finish: (() => void) | null = null;
    const p = await pair((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: first\n\n');
      finish = () => res.end('data: last\n\n');
    });
    try {
      const r = await fetch(`${p.url}/sockjs/1/abc/eventsource`);
      const reader = (r.body as ReadableStream<Uint8Array>).getReader();
      const first = await reader.read();
      assert.equal(new TextDecoder().decode(first.value), 'data: first\n\n');
      assert.ok(finish !== null, 'the peer has not ended its answer yet');
      (finish as () => void)();
      let rest = '';
      for (let c = await reader.read(); !c.done; c = await reader.read()) rest += new TextDecoder().decode(c.value);
      assert.equal(rest, 'data: last\n\n');
    } finally {
      p.close();
    }
  });

  it('breaks the client\'s response when the peer dies mid-answer, instead of leaving it hanging', async () => {
    const p = await pair((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('partial');
      setImmediate(() => res.socket?.destroy());
    });
    try {
      const r = await fetch(`${p.url}/sockjs/1/abc/xhr_streaming`);
      await assert.rejects(r.text(), 'the body ends in an error');
    } finally {
      p.close();
    }
  });
});
