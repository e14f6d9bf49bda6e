import { ClusterError } from '../lib/outcomes';
import type { ServerPackages } from './meteor-env';

/**
 * Meteor's packages, from the global `Package` at runtime (lib/ never imports Meteor, and tests
 * install a shim there). Called when the package's server module loads: `package.js` uses webapp,
 * ddp and ddp-server, so they are loaded and sockjs is already on WebApp.httpServer.
 */
export function meteorPackages(): ServerPackages {
  const pkg = (globalThis as { Package?: Partial<ServerPackages> }).Package;
  if (!pkg?.meteor?.Meteor || !pkg.webapp?.WebApp || !pkg['ddp-client']?.DDP) {
    throw new ClusterError('DDPC_ERR_NOT_METEOR', 'ddp-cluster: the Meteor glue (server/index.ts) must run inside a Meteor 3 server that uses the '
      + 'meteor, webapp and ddp packages; outside Meteor, use attach(httpServer, options) from the core instead');
  }
  return pkg as ServerPackages;
}
