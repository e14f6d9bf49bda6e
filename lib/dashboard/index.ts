import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ClusterConfig } from '../config';
import type { RegistryEvents } from '../discovery/registry';
import type { MembershipView } from '../discovery/view';
import type { Logger } from '../log';

/** What the dashboard reads; supplied by attach(). */
export interface DashboardDeps {
  readonly config: ClusterConfig;
  readonly logger: Logger;
  readonly view: () => MembershipView;
  /** The ClusterStats of lib/attach.ts (typed loosely here to avoid an import cycle). */
  readonly stats: () => Readonly<Record<string, unknown>>;
  readonly on: <E extends keyof RegistryEvents>(event: E, listener: (...args: RegistryEvents[E]) => void) => void;
}

export interface Dashboard {
  /** Handles a request under CLUSTER_DASHBOARD_PATH; `sub` is the rest of the path ('/' for the root). */
  handle(req: IncomingMessage, res: ServerResponse, sub: string): void;
  close(): void;
}

/** Placeholder until the dashboard lands: nothing is exposed. */
export function createDashboard(_deps: DashboardDeps): Dashboard {
  return {
    handle(_req, res) {
      res.writeHead(404, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' });
      res.end('dashboard not available\n');
    },
    close() {},
  };
}
