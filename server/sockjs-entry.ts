/**
 * The direct entry into Meteor's SockJS server (AttachOptions.sockjsEntry). Meteor's DDP requests
 * pass through ddp-server's wrapper of the server's listeners (stream_server.js
 * `_redirectWebsocketEndpoint`), which only rewrites raw `/websocket` URLs but calls
 * `Npm.require('url')` on every request: a module lookup that stats the bundle's node_modules
 * paths, measured at a quarter of an xhr poll's CPU in a Meteor 3.0.4 bundle. What the balancer
 * serves here goes straight to sockjs's own `middleware()` (the same sockjs server, sessions and
 * options), then to webapp's timeout adjustment, which is exactly what the wrapper would have run
 * for a SockJS URL. Anything else (raw `/websocket`, pages) still goes through Meteor's listeners.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { SockjsEntry } from '../lib/attach';

interface SockjsMiddleware {
  (req: IncomingMessage, res: ServerResponse): boolean;
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): boolean;
}

type TimeoutAdjustment = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * The entry, or null when Meteor's pieces don't have the shape it was written for (then every
 * request goes through Meteor's listeners as before): ddp-server's wrapper is the server's only
 * 'request' and 'upgrade' listener (nothing else would be skipped), the sockjs server has
 * `middleware()`, and webapp has its timeout adjustment.
 */
export function meteorSockjsEntry(httpServer: Server, streamServer: { readonly server?: unknown } | undefined, timeoutAdjustment: unknown): SockjsEntry | null {
  if (httpServer.listenerCount('request') !== 1 || httpServer.listenerCount('upgrade') !== 1) return null;
  const sockjs = streamServer?.server as { middleware?: unknown } | undefined;
  if (typeof sockjs?.middleware !== 'function' || typeof timeoutAdjustment !== 'function') return null;
  const handler = (sockjs.middleware as () => unknown).call(sockjs) as SockjsMiddleware;
  if (typeof handler !== 'function' || typeof handler.upgrade !== 'function') return null;
  const adjust = timeoutAdjustment as TimeoutAdjustment;
  return {
    request(req, res) {
      if (!handler(req, res)) return false;
      adjust(req, res);
      return true;
    },
    upgrade: (req, socket, head) => handler.upgrade(req, socket, head),
  };
}
