/* Break-glass page (docs/viewer.md). No inline script: served under the viewer's CSP.
 *
 * 1. The user gives a reason; the page remembers {study, reason} in sessionStorage and asks the
 *    viewer's next sign-in for a fresh second factor (acr_values=mfa, max_age=0).
 * 2. It forgets the current tokens and opens the study in OHIF, which signs in again.
 * 3. The viewer (app-config.js) meets the refusal of that study, calls POST /admin/break-glass
 *    with the fresh token and reloads the study once the grant exists.
 */
(function () {
  'use strict';
  var UID = /^[0-9]+(\.[0-9]+)*$/;
  var MIN_REASON = 10;

  var study = new URLSearchParams(window.location.search).get('study') || '';
  var form = document.getElementById('break-glass-form');
  var message = document.getElementById('message');

  function fail(text) {
    message.textContent = text;
    message.hidden = false;
  }

  if (!UID.test(study) || study.length > 64) {
    form.hidden = true;
    fail('No valid study was given.');
    return;
  }
  document.getElementById('study-uid').textContent = study;

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var reason = document.getElementById('reason').value.trim();
    if (reason.length < MIN_REASON) {
      fail('Please give a reason of at least ' + MIN_REASON + ' characters.');
      return;
    }
    var store = window.sessionStorage;
    store.setItem('zt-break-glass', JSON.stringify({ study: study, reason: reason }));
    store.setItem('zt-step-up', JSON.stringify({ acr_values: 'urn:zt:acr:mfa', max_age: 0 }));
    for (var i = store.length - 1; i >= 0; i--) {
      var key = store.key(i);
      if (key && key.indexOf('oidc.user:') === 0) {
        store.removeItem(key);
      }
    }
    window.location.assign('/viewer?StudyInstanceUIDs=' + encodeURIComponent(study));
  });
})();
