import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
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

  describe('upgrades', () => {
    /** A front that forwards every upgrade to `port`, recording failures; and a raw client upgrade to it. */
    async function upgradeFront(port: number) {
      const forwarder = new Forwarder();
      const target = new URL(`http://127.0.0.1:${port}`);
      const failures: { code: unknown; touched: boolean }[] = [];
      let opened = 0;
      const front = http.createServer();
      front.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
        socket.on('error', () => socket.destroy());
        forwarder.upgrade(req, socket, head, { target, headers: { [HOP_HEADER]: 'signed.hop' }, timeoutMs: 0, body: null, fresh: true },
          (err, touched) => {
            failures.push({ code: (err as { code?: unknown }).code, touched });
            socket.end('HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\n');
          }, () => void opened++);
      });
      front.listen(0, '127.0.0.1');
      await once(front, 'listening');
      const client = (path: string, extra = ''): { socket: net.Socket; got: () => string } => {
        const socket = net.connect((front.address() as AddressInfo).port, '127.0.0.1');
        let got = '';
        socket.on('data', (d: Buffer) => void (got += d.toString('latin1')));
        socket.on('error', () => undefined);
        socket.write(`GET ${path} HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Client: 1\r\n${extra}\r\n`);
        return { socket, got: () => got };
      };
      return { forwarder, front, failures, opened: () => opened, client };
    }

    it('switches a websocket through a raw connection: the peer gets the request with the hop header, the client its 101, bytes flow both ways', async () => {
      let seen: http.IncomingMessage | null = null;
      const peer = http.createServer();
      peer.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
        seen = req;
        socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello');
        if (head.length > 0) socket.write(head);
        socket.on('data', (d: Buffer) => socket.write(Buffer.concat([Buffer.from('echo:'), d])));
        // Like a websocket server: the other side's end ends it.
        socket.on('end', () => socket.end());
      });
      peer.listen(0, '127.0.0.1');
      await once(peer, 'listening');
      const f = await upgradeFront((peer.address() as AddressInfo).port);
      try {
        const c = f.client('/sockjs/1/abc/websocket', `${HOP_HEADER}: forged\r\n`);
        await eventually(() => c.got().includes('hello'), 'the 101 and the peer\'s first bytes');
        assert.match(c.got(), /^HTTP\/1\.1 101 /);
        assert.equal(f.opened(), 1);
        assert.equal(seen!.url, '/sockjs/1/abc/websocket');
        assert.equal(seen!.headers['x-client'], '1');
        assert.equal(seen!.headers.upgrade, 'websocket');
        assert.equal(seen!.headers[HOP_HEADER], 'signed.hop', 'the balancer\'s hop header, never the client\'s');
        c.socket.write('ping');
        await eventually(() => c.got().endsWith('echo:ping'), 'bytes relayed both ways');
        assert.equal(f.forwarder.openUpgrades, 1);
        c.socket.destroy();
        await eventually(() => f.forwarder.openUpgrades === 0, 'the tunnel closes with the client');
      } finally {
        f.forwarder.close();
        f.front.close();
        peer.closeAllConnections();
        peer.close();
      }
    });

    it('closes a relayed refusal whose peer leaves the connection open, once it has been idle for the upgrade timeout', async () => {
      const peer = http.createServer();
      // Answers, then neither closes nor sends anything more.
      peer.on('upgrade', (_req: http.IncomingMessage, socket: net.Socket) => void socket.write('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n'));
      peer.listen(0, '127.0.0.1');
      await once(peer, 'listening');
      const f = await upgradeFront((peer.address() as AddressInfo).port);
      try {
        const c = f.client('/sockjs/1/dead/websocket');
        await once(c.socket, 'close');
        assert.match(c.got(), /^HTTP\/1\.1 404 Not Found\r\n/);
        assert.deepEqual(f.failures, [], 'a refusal is relayed, not a failed try');
      } finally {
        f.forwarder.close();
        f.front.close();
        peer.closeAllConnections();
        peer.close();
      }
    });

    it('relays a peer\'s refusal of an upgrade as it came and closes with it; a refused connect fails before any byte reached the client', async () => {
      const peer = http.createServer();
      peer.on('upgrade', (_req: http.IncomingMessage, socket: net.Socket) => {
        socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found');
      });
      peer.listen(0, '127.0.0.1');
      await once(peer, 'listening');
      const port = (peer.address() as AddressInfo).port;
      const f = await upgradeFront(port);
      try {
        const c = f.client('/sockjs/1/dead/websocket');
        await once(c.socket, 'close');
        assert.match(c.got(), /^HTTP\/1\.1 404 Not Found\r\n[\s\S]*\r\n\r\nnot found$/);
        assert.equal(f.opened(), 0);
        assert.deepEqual(f.failures, []);
      } finally {
        f.forwarder.close();
        f.front.close();
        peer.close();
      }
      // Nothing listens there any more: the connect is refused, reported untouched (retryable).
      const dead = await upgradeFront(port);
      try {
        const c = dead.client('/sockjs/1/x/websocket');
        await once(c.socket, 'close');
        assert.deepEqual(dead.failures, [{ code: 'ECONNREFUSED', touched: false }]);
        assert.match(c.got(), /^HTTP\/1\.1 502 /);
      } finally {
        dead.forwarder.close();
        dead.front.close();
      }
    });
  });

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
