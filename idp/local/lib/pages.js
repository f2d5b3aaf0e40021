// The provider's own HTML: no external fonts or scripts, one stylesheet and one script served
// from /assets, a strict CSP. Every failure shows the same generic message.
export const GENERIC_ERROR = 'Sign-in failed. Check your user name, password or code and try again.';

export const CSP = [
  "default-src 'none'", "style-src 'self'", "script-src 'self'", "connect-src 'self'",
  "img-src 'self'", "frame-ancestors 'none'", "base-uri 'none'",
].join('; ');

export function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

export function layout(assets, title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title><link rel="stylesheet" href="${assets}/style.css"></head>
<body><main><h1>${esc(title)}</h1>${body}</main></body></html>`;
}

function errorLine(error) {
  return error ? `<p class="error" role="alert">${esc(GENERIC_ERROR)}</p>` : '';
}

export function loginPage({ assets, action, client, username = '', error = false }) {
  return layout(assets, 'Sign in', `
<p>to ${esc(client)}</p>${errorLine(error)}
<form method="post" action="${esc(action)}" autocomplete="off">
<label>User name <input name="username" value="${esc(username)}" required autofocus></label>
<label>Password <input name="password" type="password" required></label>
<button type="submit">Sign in</button></form>`);
}

export function otpPage({ assets, action, error = false }) {
  return layout(assets, 'One-time code', `
<p>Enter the 6-digit code from your authenticator app.</p>${errorLine(error)}
<form method="post" action="${esc(action)}" autocomplete="off">
<label>Code <input name="otp" inputmode="numeric" pattern="[0-9]{6}" required autofocus></label>
<button type="submit">Verify</button></form>`);
}

// JSON inside <script> is raw text: escape what could end the element, not HTML entities.
function scriptJson(value) {
  return JSON.stringify(value).replace(/</g, '\\u003c').replace(/>/g, '\\u003e').replace(/&/g, '\\u0026');
}

export function webauthnPage({
  assets, action, options, error = false, enrolAction = null,
  title = 'Security key', text = 'Use your security key or passkey to finish signing in.',
}) {
  // Options travel as inert JSON; the self-served script runs the ceremony and posts back.
  return layout(assets, title, `
<p>${esc(text)}</p>${errorLine(error)}
<script type="application/json" id="webauthn-options">${scriptJson(options)}</script>
<form method="post" action="${esc(action)}" id="webauthn-form">
<input type="hidden" name="credential" id="credential">
<button type="button" id="webauthn-start">Use security key</button></form>
${enrolAction ? `<p><a href="${esc(enrolAction)}">Register a new security key</a></p>` : ''}
<script src="${assets}/b64url.js"></script>
<script src="${assets}/webauthn.js"></script>`);
}

// Binding a new key needs the level it will give (NIST SP 800-63B 6.1.2.1): a key the user
// already has, in this sign-in, or a one-time enrolment code from an administrator.
export function enrolPage({
  assets, keyAction, codeAction, error = false,
}) {
  return layout(assets, 'Register a new security key', `
<p>Adding a security key needs proof at the security-key level.</p>${errorLine(error)}
<p><a href="${esc(keyAction)}">Confirm with a security key you already have</a></p>
<form method="post" action="${esc(codeAction)}" autocomplete="off">
<label>Enrolment code from your administrator
<input name="enrolment_code" autocapitalize="characters" spellcheck="false" required autofocus></label>
<button type="submit">Continue</button></form>`);
}

export function registerPage({ assets, action, options, error = false }) {
  return layout(assets, 'Register a security key', `
<p>Touch your security key to register it for this account.</p>${errorLine(error)}
<script type="application/json" id="webauthn-options">${scriptJson(options)}</script>
<form method="post" action="${esc(action)}" id="webauthn-form">
<input type="hidden" name="credential" id="credential">
<button type="button" id="webauthn-start">Register security key</button></form>
<script src="${assets}/b64url.js"></script>
<script src="${assets}/webauthn-register.js"></script>`);
}

export function throttledPage({ assets }) {
  return layout(assets, 'Too many attempts', `<p>Too many sign-in attempts from your network. Wait a moment, then try again.</p>`);
}

export function messagePage({ assets, title, text }) {
  return layout(assets, title, `<p>${esc(text)}</p>`);
}
