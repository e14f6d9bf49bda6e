import { Meteor } from 'meteor/meteor';
// Resolved by Meteor's module system through node_modules/ddp-cluster/client/package.json.
import { Cluster } from 'ddp-cluster/client';

// Public services (Cluster.allowPublicAccess) are reached with Cluster.discoverConnection(name);
// this page only shows that the client entry loads, and which instance serves its own session.
window.ddpClusterClient = Cluster;

Meteor.startup(() => {
  Meteor.callAsync('whoami').then(
    (result) => { document.getElementById('method').textContent = JSON.stringify(result); },
    (error) => { document.getElementById('method').textContent = `error: ${error.message}`; },
  );
});
