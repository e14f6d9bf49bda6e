import type { LoadSnapshot } from '../load';
import type { EntryDoc, MemberState } from './entry';

/** One instance as this observer sees it. */
export interface Member {
  readonly id: string;
  readonly service: string;
  readonly endpoint: string;
  readonly endpointHash: string;
  readonly balancer: string | null;
  readonly state: MemberState;
  /** Heartbeat younger than the stale horizon (always true for this instance itself). */
  readonly healthy: boolean;
  readonly self: boolean;
  readonly appVersion: string | null;
  readonly pkgVersion: string;
  readonly host: string;
  readonly pid: number;
  readonly startedAt: number;
  readonly heartbeatAgeMs: number;
  /** Wall-clock time of the heartbeat that carried `load`, by the writer's clock. */
  readonly heartbeatAt: number;
  readonly heartbeatMs: number;
  /** How long it has been serving, by now (0 unless serving). */
  readonly servingMs: number;
  readonly load: LoadSnapshot;
}

export interface DuplicateEndpoint {
  readonly endpoint: string;
  readonly ids: readonly string[];
}

/** An immutable snapshot of the cluster; routing only ever reads one of these. */
export interface MembershipView {
  readonly at: number;
  /** All members, sorted by id. */
  readonly members: readonly Member[];
  readonly self: Member | null;
  readonly byId: ReadonlyMap<string, Member>;
  readonly byService: ReadonlyMap<string, readonly Member[]>;
  readonly byEndpointHash: ReadonlyMap<string, Member>;
  /** Members that advertise a public balancer URL. */
  readonly balancers: readonly Member[];
  /** Live members that claim the same endpoint URL: a misconfiguration. */
  readonly duplicates: readonly DuplicateEndpoint[];
  /** Discovery answered on the last attempt. */
  readonly discoveryOk: boolean;
  /** Discovery has been unreachable for longer than the view-stale horizon. */
  readonly stale: boolean;
}

/** An entry with how long ago, by the observer's clock, its heartbeat last advanced. */
export interface Observed {
  readonly entry: EntryDoc;
  readonly ageMs: number;
}

export interface ViewInput {
  readonly at: number;
  readonly observed: readonly Observed[];
  readonly self: Member | null;
  readonly staleMs: number;
  readonly discoveryOk: boolean;
  readonly stale: boolean;
}

export function memberFrom(o: Observed, staleMs: number): Member {
  const e = o.entry;
  return Object.freeze({
    id: e._id,
    service: e.service,
    endpoint: e.endpoint,
    endpointHash: e.endpointHash,
    balancer: e.balancer,
    state: e.state,
    healthy: o.ageMs < staleMs,
    self: false,
    appVersion: e.appVersion,
    pkgVersion: e.pkgVersion,
    host: e.host,
    pid: e.pid,
    startedAt: e.startedAt.getTime(),
    heartbeatAgeMs: Math.max(0, Math.round(o.ageMs)),
    heartbeatAt: e.heartbeatAt.getTime(),
    heartbeatMs: e.heartbeatMs,
    servingMs: e.state === 'serving' ? e.servingMs + Math.max(0, o.ageMs) : 0,
    load: e.load,
  });
}

export function buildView(input: ViewInput): MembershipView {
  const members = input.observed
    .filter((o) => o.entry._id !== input.self?.id)
    .map((o) => memberFrom(o, input.staleMs));
  if (input.self) members.push(input.self);
  return viewFromMembers(members, input);
}

/** Indexes a list of members (any order) into a view; `meta` supplies the view-wide flags. */
export function viewFromMembers(list: readonly Member[],
  meta: { readonly at: number; readonly self: Member | null; readonly discoveryOk: boolean; readonly stale: boolean }): MembershipView {
  const members = [...list].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const input = meta;

  const byId = new Map<string, Member>();
  const byService = new Map<string, Member[]>();
  const byEndpointHash = new Map<string, Member>();
  const claims = new Map<string, string[]>();
  for (const m of members) {
    byId.set(m.id, m);
    push(byService, m.service, m);
    // Prefer a healthy claimant (and this instance itself) when two claim one endpoint.
    const prev = byEndpointHash.get(m.endpointHash);
    if (!prev || (!prev.healthy && m.healthy) || m.self) byEndpointHash.set(m.endpointHash, m);
    if (m.healthy) push(claims, m.endpoint, m.id);
  }
  const duplicates = [...claims]
    .filter(([, ids]) => ids.length > 1)
    .map(([endpoint, ids]) => Object.freeze({ endpoint, ids: Object.freeze(ids) }));

  return Object.freeze({
    at: input.at,
    members: Object.freeze(members),
    self: input.self,
    byId,
    byService: byService as ReadonlyMap<string, readonly Member[]>,
    byEndpointHash,
    balancers: Object.freeze(members.filter((m) => m.balancer !== null)),
    duplicates: Object.freeze(duplicates),
    discoveryOk: input.discoveryOk,
    stale: input.stale,
  });
}

export function emptyView(self: Member | null, at: number): MembershipView {
  return buildView({ at, observed: [], self, staleMs: 1, discoveryOk: false, stale: false });
}

export interface ViewDiff {
  readonly joined: readonly Member[];
  readonly left: readonly Member[];
  /** Members whose state, health, endpoint or balancer changed (load changes are not reported). */
  readonly changed: readonly { readonly before: Member; readonly after: Member }[];
}

export function diffViews(before: MembershipView, after: MembershipView): ViewDiff {
  const joined: Member[] = [];
  const changed: { before: Member; after: Member }[] = [];
  for (const m of after.members) {
    const b = before.byId.get(m.id);
    if (!b) joined.push(m);
    else if (b.state !== m.state || b.healthy !== m.healthy || b.endpoint !== m.endpoint || b.balancer !== m.balancer) {
      changed.push({ before: b, after: m });
    }
  }
  const left = before.members.filter((m) => !after.byId.has(m.id));
  return { joined, left, changed };
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}
