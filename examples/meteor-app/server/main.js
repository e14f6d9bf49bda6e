import os from 'node:os';
import { Meteor } from 'meteor/meteor';
import { WebApp } from 'meteor/webapp';
import { Cluster } from 'meteor/ddpcluster:ddp-cluster';

// Two faces of one configuration. Deployment facts come from the environment, set per instance
// by whatever starts it: CLUSTER_DISCOVERY_URL, CLUSTER_ENDPOINT_URL, CLUSTER_SECRET (and PORT,
// MONGO_URL, ROOT_URL). What the app *is* comes from code. Both are merged when Meteor starts;
// where both say something, the code wins.
Cluster.register('web', { uiService: 'web' });
Cluster.on('join', (member) => console.log(`cluster: ${member.id} joined at ${member.endpoint}`));
Cluster.on('leave', (member) => console.log(`cluster: ${member.id} left`));

// Which instance answered. CLUSTER_INSTANCE_ID is also the id in the registry when it is set.
const INSTANCE = process.env.CLUSTER_INSTANCE_ID || `${os.hostname()}:${process.env.PORT}`;

function whoami(connection) {
  return {
    instance: INSTANCE,
    // The client's own address even when a peer balancer proxied the session here (hop auth,
    // needs CLUSTER_SECRET), with no HTTP_FORWARDED_COUNT to tune.
    clientAddress: connection ? connection.clientAddress : null,
    session: connection ? connection.id : null,
    at: new Date(),
  };
}

// A second service of the same cluster (examples/meteor-npm-app registers `search`): a server-side
// DDP connection to a healthy `search` member, which follows the cluster as members come and go.
// With no `search` member yet it waits, offline.
const search = Cluster.discoverConnection('search');

Meteor.methods({
  // What `npm run bench:workers` calls: the cost of a DDP method round trip, nothing else.
  echo(value) {
    return value;
  },
  whoami() {
    return whoami(this.connection);
  },
  async searchWhoami() {
    if (!search.status().connected) throw new Meteor.Error('search-unavailable', 'no search member reached yet');
    return search.callAsync('whoami');
  },
});

// A publication of one client-only document, so the page shows the instance that runs its
// subscriptions too (the same one: a DDP session lives on one instance).
Meteor.publish('whoami', function () {
  this.added('whoami', 'me', whoami(this.connection));
  this.ready();
});

WebApp.onListening(() => {
  const status = Cluster.status();
  console.log(status
    ? `cluster: ${INSTANCE} is "${status.config.service}" on ${status.config.endpointUrl ?? '(no CLUSTER_ENDPOINT_URL: not registered)'}`
    : 'cluster: not clustered (set CLUSTER_DISCOVERY_URL)');
});
