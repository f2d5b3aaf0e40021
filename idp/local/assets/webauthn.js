// WebAuthn assertion for the login page (no framework; CSP script-src 'self').
(function () {
  'use strict';
  var b64urlToBuf = window.ztB64url.toBuf, bufToB64url = window.ztB64url.fromBuf;
  function start() {
    var o = JSON.parse(document.getElementById('webauthn-options').textContent);
    var publicKey = {
      challenge: b64urlToBuf(o.challenge),
      rpId: o.rpId,
      timeout: o.timeout,
      userVerification: o.userVerification,
      allowCredentials: (o.allowCredentials || []).map(function (c) {
        return { type: 'public-key', id: b64urlToBuf(c.id), transports: c.transports };
      })
    };
    navigator.credentials.get({ publicKey: publicKey }).then(function (cred) {
      var r = cred.response;
      document.getElementById('credential').value = JSON.stringify({
        id: cred.id,
        rawId: bufToB64url(cred.rawId),
        type: cred.type,
        clientExtensionResults: cred.getClientExtensionResults(),
        response: {
          clientDataJSON: bufToB64url(r.clientDataJSON),
          authenticatorData: bufToB64url(r.authenticatorData),
          signature: bufToB64url(r.signature),
          userHandle: r.userHandle ? bufToB64url(r.userHandle) : undefined
        }
      });
      document.getElementById('webauthn-form').submit();
    }).catch(function () {
      document.getElementById('webauthn-form').submit(); // empty credential: generic failure
    });
  }
  document.getElementById('webauthn-start').addEventListener('click', start);
  if (!document.querySelector('.error')) start(); // no automatic retry after a failure
}());
