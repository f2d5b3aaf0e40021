// WebAuthn registration (enrolment) for the IdP's own page (CSP script-src 'self').
(function () {
  'use strict';
  var b64urlToBuf = window.ztB64url.toBuf, bufToB64url = window.ztB64url.fromBuf;
  function start() {
    var o = JSON.parse(document.getElementById('webauthn-options').textContent);
    var publicKey = {
      challenge: b64urlToBuf(o.challenge),
      rp: o.rp,
      user: { id: b64urlToBuf(o.user.id), name: o.user.name, displayName: o.user.displayName },
      pubKeyCredParams: o.pubKeyCredParams,
      timeout: o.timeout,
      attestation: o.attestation,
      authenticatorSelection: o.authenticatorSelection,
      excludeCredentials: (o.excludeCredentials || []).map(function (c) {
        return { type: 'public-key', id: b64urlToBuf(c.id) };
      })
    };
    navigator.credentials.create({ publicKey: publicKey }).then(function (cred) {
      var r = cred.response;
      document.getElementById('credential').value = JSON.stringify({
        id: cred.id,
        rawId: bufToB64url(cred.rawId),
        type: cred.type,
        clientExtensionResults: cred.getClientExtensionResults(),
        response: {
          clientDataJSON: bufToB64url(r.clientDataJSON),
          attestationObject: bufToB64url(r.attestationObject),
          transports: r.getTransports ? r.getTransports() : []
        }
      });
      document.getElementById('webauthn-form').submit();
    }).catch(function () {
      document.getElementById('webauthn-form').submit(); // empty credential: generic failure
    });
  }
  document.getElementById('webauthn-start').addEventListener('click', start);
  if (!document.querySelector('.error')) start();
}());
