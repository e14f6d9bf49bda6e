import type { Member } from '../discovery/view';

/**
 * Members grouped by machine (issue 14): by host, then id, so a primary's workers (`<id>-w<i>`,
 * same host) are listed right after it in the dashboard and `ddp-cluster status`.
 */
export function byMachine<M extends Pick<Member, 'host' | 'id'>>(members: readonly M[]): M[] {
  return [...members].sort((a, b) => (a.host < b.host ? -1 : a.host > b.host ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}
