import type { IncomingMessage, ServerResponse } from 'node:http';
import { randomInt } from 'node:crypto';
import type { Member } from '../discovery/view';
import { sendSized } from './exchange';

export interface InfoOptions {
  readonly websocket: boolean;
  readonly cors: boolean;
  readonly cookieNeeded: boolean;
  readonly pathPrefix: string;
}

/** What base_url may be derived from besides the chosen member's own balancer URL. */
export interface OriginPolicy {
  /** This instance's public URL (CLUSTER_BALANCER_URL), if configured: used whatever the headers say. */
  readonly balancerUrl: string | null;
  /** HTTP_FORWARDED_COUNT: proxies in front of this instance trusted to set X-Forwarded-Host/-Proto. */
  readonly forwardedCount: number;
}

/**
 * The path that names `member` (and `service`) to any balancer: `<prefix>/cluster-ddp/<endpointHash>/<service>`;
 * with `via`, `<endpointHash>.<viaHash>`: the balancer `via` carries the session's polling (translate.ts).
 */
export function pinnedPath(member: Pick<Member, 'endpointHash'>, service: string, pathPrefix: string, via: Pick<Member, 'endpointHash'> | null = null): string {
  const segment = via === null ? member.endpointHash : `${member.endpointHash}.${via.endpointHash}`;
  return `${pathPrefix}/cluster-ddp/${segment}/${service}`;
}

/**
 * Where a client should open its session on `member`: the member's public balancer URL when it
 * has one (the client then connects straight to it), else the instance the client already talks
 * to, which proxies. sockjs-client follows `base_url` in the info reply; it must be absolute
 * (its websocket transport derives ws:// from the http:// prefix).
 */
export function baseUrlFor(req: IncomingMessage, member: Member, service: string, pathPrefix: string, policy: OriginPolicy, via: Member | null = null): string {
  if (member.balancer !== null) return member.balancer + pinnedPath(member, service, pathPrefix);
  return (policy.balancerUrl ?? requestOrigin(req, policy.forwardedCount)) + pinnedPath(member, service, pathPrefix, via);
}

/**
 * The origin the client used to reach us: the host it asked for (several hostnames may point at
 * one cluster). X-Forwarded-Host and X-Forwarded-Proto count only behind `forwardedCount` trusted
 * proxies, and then only the entry the outermost of them wrote (like Meteor's use of
 * HTTP_FORWARDED_COUNT for X-Forwarded-For); a client can't choose another host through them.
 */
export function requestOrigin(req: IncomingMessage, forwardedCount: number): string {
  const proto = forwardedCount > 0 ? trusted(req.headers['x-forwarded-proto'], forwardedCount) : null;
  const scheme = proto === 'https' || proto === 'http' ? proto : (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
  const forwardedHost = forwardedCount > 0 ? trusted(req.headers['x-forwarded-host'], forwardedCount) : null;
  const host = forwardedHost ?? firstToken(req.headers.host) ?? 'localhost';
  return `${scheme}://${/^[A-Za-z0-9.:[\]_-]{1,255}$/.test(host) ? host : 'localhost'}`;
}

/** The entry `count` places from the end of a comma-separated header (all values joined), or null. */
function trusted(v: string | string[] | undefined, count: number): string | null {
  if (v === undefined) return null;
  const list = (Array.isArray(v) ? v.join(',') : v).split(',').map((t) => t.trim().toLowerCase());
  if (list.length < count) return null;
  const t = list[list.length - count];
  return t ? t : null;
}

function firstToken(v: string | string[] | undefined): string | null {
  const s = Array.isArray(v) ? v[0] : v;
  if (typeof s !== 'string') return null;
  const t = s.split(',')[0]?.trim().toLowerCase();
  return t ? t : null;
}

/**
 * Answers GET <prefix>/sockjs/info as sockjs 0.3.24 would, plus `base_url`: status, headers and
 * body in one write (sendSized).
 */
export function sendInfo(req: IncomingMessage, res: ServerResponse, opts: InfoOptions, baseUrl: string | null): void {
  const body: Record<string, unknown> = {
    websocket: opts.websocket,
    origins: opts.cors ? ['*:*'] : undefined,
    cookie_needed: opts.cookieNeeded,
    entropy: randomInt(0, 2 ** 32),
  };
  if (baseUrl !== null) body.base_url = baseUrl;
  const headers = [
    'Content-Type', 'application/json; charset=UTF-8',
    'Cache-Control', 'no-store, no-cache, no-transform, must-revalidate, max-age=0',
  ];
  if (opts.cors) {
    // Same CORS as sockjs' xhr_cors filter.
    const origin = req.headers.origin;
    if (typeof origin === 'string' && origin !== '') headers.push('Access-Control-Allow-Origin', origin, 'Access-Control-Allow-Credentials', 'true');
    else headers.push('Access-Control-Allow-Origin', '*');
    headers.push('Vary', 'Origin');
    const asked = req.headers['access-control-request-headers'];
    if (typeof asked === 'string') headers.push('Access-Control-Allow-Headers', asked);
  }
  sendSized(res, 200, headers, JSON.stringify(body));
}
