/**
 * What a request is, from its method and URL alone: no I/O, no cluster state.
 *
 * Paths understood (after ROOT_URL_PATH_PREFIX):
 *   /sockjs/info, /sockjs/<server>/<session>/<transport>, /sockjs/websocket, /sockjs/iframe*.html
 *   /websocket                                   raw websocket (Meteor rewrites it to /sockjs/websocket)
 *   /cluster-ddp/<endpointHash>/<service>/...    pinned: the same, on the named endpoint
 *   /cluster-ddp/<endpointHash>.<viaHash>/<service>/...
 *                                                pinned, and its polling carried by the member
 *                                                <viaHash> (its entry balancer, translate.ts)
 *   /cluster-ddp/carry                           a peer's upgrade carrying one such session (carried.ts)
 *   /<service>/sockjs/..., /<service>/websocket  public service through any balancer
 *   <dashboardPath>[/...], <dashboardPath>/health
 * Everything else is the app's (pages, assets, routes).
 */

import type { MalformedReason } from '../outcomes';
import { NAME_PATTERN } from '../names';

export const TRANSPORTS = ['websocket', 'xhr', 'xhr_send', 'xhr_streaming', 'eventsource', 'htmlfile', 'jsonp', 'jsonp_send'] as const;
export type Transport = (typeof TRANSPORTS)[number];

/**
 * Transports whose request always starts a new sockjs session. Only websocket: streaming
 * transports (xhr_streaming, eventsource, htmlfile) re-request the same session URL each time
 * sockjs ends a response (every 128 KiB), so they are polls of an existing session too.
 */
const OPENING: ReadonlySet<Transport> = new Set(['websocket']);

/** Where a DDP request was addressed: its service (null = the default) and pinned endpoint hash. */
export interface Address {
  readonly service: string | null;
  readonly pinned: string | null;
}

export type RequestFacts =
  | (Address & { readonly kind: 'info'; readonly localUrl: string })
  | (Address & {
      readonly kind: 'transport';
      readonly serverId: string;
      readonly sessionId: string;
      readonly transport: Transport;
      /** True when this request always creates its session (websocket). */
      readonly opens: boolean;
      /** Endpoint hash of the balancer that carries this session's polling to its member (translate.ts), if any. */
      readonly via: string | null;
      readonly localUrl: string;
    })
  | { readonly kind: 'carry' }
  | (Address & { readonly kind: 'raw-websocket'; readonly localUrl: string })
  | (Address & { readonly kind: 'sockjs-other'; readonly localUrl: string })
  | { readonly kind: 'dashboard'; readonly sub: string }
  | { readonly kind: 'health' }
  | { readonly kind: 'page' }
  | { readonly kind: 'malformed'; readonly status: 400 | 404 | 414; readonly reason: MalformedReason };

export type DdpFacts = Extract<RequestFacts, { localUrl: string }>;

export interface ClassifyOptions {
  /** ROOT_URL_PATH_PREFIX, '' or '/app'. */
  readonly pathPrefix: string;
  /** CLUSTER_DASHBOARD_PATH, e.g. '/cluster'. */
  readonly dashboardPath: string;
}

export const MAX_URL_LENGTH = 8192;
const HASH = /^[0-9a-f]{8,64}$/;
const HASH_VIA = /^([0-9a-f]{8,64})\.([0-9a-f]{8,64})$/;
/** Where a peer opens the websocket that carries one translated polling session (carried.ts). */
export const CARRY_PATH = '/cluster-ddp/carry';
// sockjs-node accepts [^/.]+; we also bound the length and refuse control characters.
const SERVER_ID = /^[^/.\x00-\x20\x7f]{1,64}$/;
const SESSION_ID = /^[^/.\x00-\x20\x7f]{1,128}$/;
const IFRAME = /^\/iframe[0-9a-z.-]*\.html$/;

const malformed = (status: 400 | 404 | 414, reason: MalformedReason): RequestFacts => ({ kind: 'malformed', status, reason });

export function classify(rawUrl: string, opts: ClassifyOptions): RequestFacts {
  if (rawUrl.length > MAX_URL_LENGTH) return malformed(414, 'URL too long');
  const q = rawUrl.indexOf('?');
  const path = q === -1 ? rawUrl : rawUrl.slice(0, q);
  const query = q === -1 ? '' : rawUrl.slice(q);
  if (!path.startsWith('/')) return { kind: 'page' };
  // '//x' and '/\\x' parse as protocol-relative URLs; an invalid host there makes the WHATWG URL
  // parser throw, and Meteor's own listener parses every request URL that way: refuse it here.
  if ((path[1] === '/' || path[1] === '\\') && !parses(rawUrl)) return malformed(400, 'invalid URL');

  const prefix = opts.pathPrefix;
  if (prefix !== '' && path !== prefix && !path.startsWith(prefix + '/')) return { kind: 'page' };
  const rest = path.slice(prefix.length) || '/';

  const dash = opts.dashboardPath;
  if (rest === dash + '/health') return { kind: 'health' };
  if (rest === dash || rest.startsWith(dash + '/')) return { kind: 'dashboard', sub: rest.slice(dash.length) || '/' };

  if (rest === '/sockjs' || rest.startsWith('/sockjs/')) {
    return sockjs(rest.slice('/sockjs'.length), query, { service: null, pinned: null }, prefix);
  }
  if (rest === '/websocket' || rest === '/websocket/') {
    return { kind: 'raw-websocket', service: null, pinned: null, localUrl: `${prefix}/websocket${query}` };
  }
  if (rest === CARRY_PATH) return { kind: 'carry' };
  if (rest.startsWith('/cluster-ddp/')) return pinned(rest, query, prefix);

  // /<service>/sockjs/... or /<service>/websocket: a public service through any balancer.
  const slash = rest.indexOf('/', 1);
  if (slash > 1) {
    const service = rest.slice(1, slash);
    const tail = rest.slice(slash);
    if (NAME_PATTERN.test(service)) {
      if (tail === '/sockjs' || tail.startsWith('/sockjs/')) {
        return sockjs(tail.slice('/sockjs'.length), query, { service, pinned: null }, prefix);
      }
      if (tail === '/websocket' || tail === '/websocket/') {
        return { kind: 'raw-websocket', service, pinned: null, localUrl: `${prefix}/websocket${query}` };
      }
    }
  }
  return { kind: 'page' };
}

function parses(url: string): boolean {
  try {
    new URL(url, 'http://localhost');
    return true;
  } catch {
    return false;
  }
}

function pinned(rest: string, query: string, prefix: string): RequestFacts {
  // /cluster-ddp/<hash>/<service><tail>
  const parts = rest.split('/');
  const segment = parts[2] ?? '';
  const service = parts[3] ?? '';
  let hash = segment;
  let via: string | null = null;
  if (!HASH.test(segment)) {
    const m = HASH_VIA.exec(segment);
    if (m === null) return malformed(404, 'unknown endpoint');
    hash = m[1] as string;
    via = m[2] as string;
  }
  if (!NAME_PATTERN.test(service)) return malformed(400, 'bad service name');
  const tail = rest.slice(`/cluster-ddp/${segment}/${service}`.length);
  if (tail === '/websocket' || tail === '/websocket/') {
    return { kind: 'raw-websocket', service, pinned: hash, localUrl: `${prefix}/websocket${query}` };
  }
  // meteorhacks:cluster's base_url was <balancer>/cluster-ddp/<hash>/<service>, sockjs appends its paths.
  const sock = tail.startsWith('/sockjs/') || tail === '/sockjs' ? tail.slice('/sockjs'.length) : tail;
  return sockjs(sock, query, { service, pinned: hash }, prefix, via);
}

function sockjs(tail: string, query: string, address: Address, prefix: string, via: string | null = null): RequestFacts {
  // Fields written out, not `...address`: Meteor's Babel compiles object spread to a helper that
  // cost 5 % of a Meteor server's CPU under xhr-polling, on every request.
  const { service, pinned } = address;
  const localUrl = `${prefix}/sockjs${tail}${query}`;
  if (tail === '' || tail === '/') return { kind: 'sockjs-other', service, pinned, localUrl };
  if (tail === '/info') return { kind: 'info', service, pinned, localUrl };
  if (tail === '/websocket' || tail === '/websocket/') return { kind: 'raw-websocket', service, pinned, localUrl: `${prefix}/websocket${query}` };
  if (IFRAME.test(tail)) return { kind: 'sockjs-other', service, pinned, localUrl };
  const parts = tail.split('/');
  if (parts.length !== 4) return malformed(404, 'not a sockjs path');
  const serverId = parts[1] ?? '';
  const sessionId = parts[2] ?? '';
  const transport = parts[3] ?? '';
  if (!SERVER_ID.test(serverId) || !SESSION_ID.test(sessionId)) return malformed(404, 'bad sockjs session path');
  if (!(TRANSPORTS as readonly string[]).includes(transport)) return malformed(404, 'unknown sockjs transport');
  const t = transport as Transport;
  return { kind: 'transport', service, pinned, serverId, sessionId, transport: t, opens: OPENING.has(t), via, localUrl };
}
