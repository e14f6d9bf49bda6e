/**
 * A worker-side process for tests/workers.test.ts: an HTTP server that accepts connections handed
 * over IPC (acceptHandoffs) and reports, for each, the socket options it was served with.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import { acceptHandoffs } from '../../lib/workers/handoff';

/** Node keeps a socket's TCP_NODELAY wish under this symbol (lib/net.js); there is no getter. */
function noDelayOf(s: Socket): boolean | null {
  const sym = Object.getOwnPropertySymbols(s).find((x) => x.description === 'kSetNoDelay');
  return sym === undefined ? null : Boolean((s as unknown as Record<symbol, unknown>)[sym]);
}

const server = http.createServer((req, res) => res.end(`served ${req.url}`));
server.on('connection', (s: Socket) => process.send?.({ type: 'accepted', noDelay: noDelayOf(s) }));
acceptHandoffs(server, new WeakSet());
process.send?.({ type: 'ready' });
process.on('disconnect', () => process.exit(0));
