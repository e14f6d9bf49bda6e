/**
 * When a forwarded request or upgrade that failed is tried again, declared as data (like undici's
 * RetryHandler options) and decided by one pure function over the attempt.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { ErrorKind } from '../outcomes';
import type { Transport } from './classify';
import type { Balanced } from './route';

export interface RetryPolicy {
  /** Other members a failed request or upgrade may move to, at most, one after the other. */
  readonly maxOtherMembers: number;
  /**
   * Errors that mean nobody listens there: the peer is marked down (passive health check) and the
   * request is never tried on it again. Any other error before an answer (typically a kept-alive
   * connection the peer had just closed) says nothing about the peer.
   */
  readonly refusals: readonly ErrorKind[];
  /** After such another error, before any answer: once more on the same member, on a new connection (requests only). */
  readonly sameMemberOnce: boolean;
  /**
   * Transports never moved to another member: a send's body was consumed and its session is gone.
   * Receiving requests of a session whose member just died may move (the survivor opens it: it
   * was lost anyway, and a first poll right after a pin loses nothing).
   */
  readonly neverMoved: readonly Transport[];
  /** Page requests that may move to another member (bodiless ones only). */
  readonly pageMethods: readonly string[];
}

export const RETRY_POLICY: RetryPolicy = {
  maxOtherMembers: 2,
  refusals: ['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT'],
  sameMemberOnce: true,
  neverMoved: ['xhr_send', 'jsonp_send'],
  pageMethods: ['GET', 'HEAD'],
};

/** What the retry decision reads of one forwarding attempt and how it failed. */
export interface FailedAttempt {
  readonly upgrade: boolean;
  readonly facts: Balanced;
  readonly method: string;
  readonly headers: IncomingHttpHeaders;
  /** The route decision was for a new session. */
  readonly newSession: boolean;
  /** Members already tried after the first one. */
  readonly otherMembers: number;
  /** This was already the same-member retry. */
  readonly sameMemberRetried: boolean;
  /** The request's body was read before forwarding, so it can be sent again. */
  readonly bodyKept: boolean;
  readonly error: ErrorKind;
  /** Bytes of the peer's answer already reached the client. */
  readonly clientTouched: boolean;
  /** The client's socket is gone. */
  readonly clientGone: boolean;
}

export type RetryVerdict = 'same-member' | 'other-member' | 'abandon' | 'give-up';

export function isRefusal(policy: RetryPolicy, error: ErrorKind): boolean {
  return policy.refusals.includes(error);
}

/**
 * What to do after a failed attempt: the same member again, another member, give up with 502, or
 * abandon (part of the answer reached the client: cut it, nothing can be replayed).
 */
export function retryVerdict(policy: RetryPolicy, a: FailedAttempt): RetryVerdict {
  if (a.upgrade) {
    // A websocket upgrade always starts a session: nothing is lost by trying another member.
    return a.otherMembers < policy.maxOtherMembers && !a.clientGone ? 'other-member' : 'give-up';
  }
  if (a.clientTouched) return 'abandon';
  if (policy.sameMemberOnce && !isRefusal(policy, a.error) && !a.sameMemberRetried && (!hasBody(a.headers) || a.bodyKept)) return 'same-member';
  if (movable(policy, a) && a.otherMembers < policy.maxOtherMembers) return 'other-member';
  return 'give-up';
}

/** May a request that failed before any byte reached the client go to another member? */
function movable(policy: RetryPolicy, a: FailedAttempt): boolean {
  if (hasBody(a.headers)) return false;
  if (a.newSession) return true;
  if (a.facts.kind === 'transport') return !policy.neverMoved.includes(a.facts.transport);
  return a.facts.kind === 'page' && policy.pageMethods.includes(a.method);
}

export function hasBody(headers: IncomingHttpHeaders): boolean {
  const len = headers['content-length'];
  return headers['transfer-encoding'] !== undefined || (len !== undefined && len !== '0');
}
