/**
 * ddp-cluster's Meteor server entry (package.js `api.mainModule`). Meteor loads it after webapp
 * and ddp-server, so WebApp.httpServer already carries sockjs and ddp-server's overshadowing
 * listener (one 'request', one 'upgrade'); the balancer goes in front of them at startup.
 */
import { MeteorCluster, type ClusterApi } from './cluster';
import { meteorPackages } from './meteor';

export type { ClusterApi, ClusterListener, ClusterStatus, ConnectOptions, RegisterOptions } from './cluster';
export type { DdpConnection, DdpConnectOptions } from './meteor-env';
export { ClusterError, ERROR_CODES, type ErrorCode } from '../lib/outcomes';

const packages = meteorPackages();
const cluster = new MeteorCluster(packages);

/** The Cluster API, compatible with meteorhacks:cluster. */
export const Cluster: ClusterApi = cluster;

// Attach once, with the merged env + JS configuration. Meteor.startup runs after all package and
// app code has loaded and before webapp's main() listens, so the balancer sees the first request
// and a bad configuration fails the boot. Re-queueing from the first hook puts the attach after
// the startup callbacks the app registered while loading, so JS API calls made there count too.
const { Meteor } = packages.meteor;
Meteor.startup(() => Meteor.startup(() => cluster.start()));
