import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Forwarder, PEER_IDLE_MS } from '../lib/balancer/proxy';
import { httpRequest } from './support/ddp-clients';
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
});
