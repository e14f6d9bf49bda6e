/* global Package, Npm */
// Meteor package definition (Meteor 3.0+). Atmosphere only publishes names of the form
// <meteor-developer-account>:<name>; "ddpcluster" is the account the package is published from.
// Local use needs no account: put this directory's parent in METEOR_PACKAGE_DIRS (README.md, section Meteor).
Package.describe({
  name: 'ddpcluster:ddp-cluster',
  version: '0.1.0',
  summary: 'Every Meteor 3 server a cluster member and a sticky, load-aware DDP balancer',
  documentation: 'README.md',
});

// The package.json "dependencies" that the server code imports at run time, at the same exact
// versions (Npm.depends takes exact versions only). Not commander (only the ddp-cluster CLI uses
// it). tests/readme.test.ts checks this list against package.json.
Npm.depends({
  mongodb: '6.22.0',
  cookie: '1.1.1',
  'prom-client': '15.1.3',
  ws: '8.23.0',
});

Package.onUse((api) => {
  api.versionsFrom('3.0');
  // ddp-server first: when server/index.ts loads, sockjs and ddp-server's overshadowing listener
  // are already on WebApp.httpServer, and the balancer is attached in front of them at startup.
  api.use(['typescript', 'ecmascript', 'webapp', 'ddp', 'ddp-server', 'meteor'], 'server');
  api.use(['typescript', 'ecmascript', 'ddp', 'tracker', 'meteor'], 'client');
  api.mainModule('server/index.ts', 'server');
  api.mainModule('client/index.ts', 'client');
  api.export('Cluster');
});
