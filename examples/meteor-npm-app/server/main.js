import os from 'node:os';
import { Meteor } from 'meteor/meteor';
import { Cluster } from 'ddp-cluster/server';

// The npm face of the package: the same Cluster API as `meteor add ddpcluster:ddp-cluster`.
// This app is the `search` service of the cluster that examples/meteor-app (`web`) belongs to;
// the environment supplies CLUSTER_DISCOVERY_URL, CLUSTER_ENDPOINT_URL and CLUSTER_SECRET.
Cluster.register('search');

const INSTANCE = process.env.CLUSTER_INSTANCE_ID || `${os.hostname()}:${process.env.PORT}`;

Meteor.methods({
  whoami() {
    const connection = this.connection;
    return {
      service: 'search',
      instance: INSTANCE,
      clientAddress: connection ? connection.clientAddress : null,
      session: connection ? connection.id : null,
    };
  },
});
