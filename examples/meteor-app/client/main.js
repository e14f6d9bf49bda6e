import { Meteor } from 'meteor/meteor';
import { Mongo } from 'meteor/mongo';
import { Tracker } from 'meteor/tracker';

// Filled by the server's `whoami` publication (a client-only collection).
const Whoami = new Mongo.Collection('whoami');

function show(id, value) {
  document.getElementById(id).textContent = typeof value === 'string' ? value : JSON.stringify(value, null, 1);
}

function callWhoami() {
  show('method', '…');
  Meteor.callAsync('whoami').then((result) => show('method', result), (error) => show('method', `error: ${error.message}`));
}

Meteor.startup(() => {
  show('page-origin', window.location.origin);
  // Set only when the server pins pages to balancer URLs (CLUSTER_PIN_DDP_URL=1).
  show('ddp-url', __meteor_runtime_config__.DDP_DEFAULT_CONNECTION_URL || `${window.location.origin} (default)`);
  Tracker.autorun(() => show('status', Meteor.status().status));
  Meteor.subscribe('whoami');
  Tracker.autorun(() => {
    const me = Whoami.findOne('me');
    if (me) show('publication', me);
  });
  // Re-run the method after every (re)connection: it reports the instance of the new session.
  Tracker.autorun(() => {
    if (Meteor.status().connected) Tracker.nonreactive(callWhoami);
  });
  document.getElementById('again').addEventListener('click', callWhoami);
  document.getElementById('reconnect').addEventListener('click', () => {
    Meteor.disconnect();
    Meteor.reconnect();
  });
});
