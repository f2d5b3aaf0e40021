// base64url <-> ArrayBuffer for the WebAuthn pages (RFC 4648 section 5). Loaded before
// webauthn.js and webauthn-register.js, which share it (CSP script-src 'self').
(function () {
  'use strict';
  function toBuf(s) {
    var b = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4));
    var out = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) out[i] = b.charCodeAt(i);
    return out.buffer;
  }
  function fromBuf(buf) {
    var bytes = new Uint8Array(buf), s = '';
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  window.ztB64url = { toBuf: toBuf, fromBuf: fromBuf };
})();
