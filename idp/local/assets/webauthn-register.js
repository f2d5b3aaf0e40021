// WebAuthn registration (enrolment) for the IdP's own page (CSP script-src 'self').
(function () {
  'use strict';
  function b64urlToBuf(s) {
    var b = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4));
    var out = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) out[i] = b.charCodeAt(i);
    return out.buffer;
  }
  function bufToB64url(buf) {
    var bytes = new Uint8Array(buf), s = '';
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
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
