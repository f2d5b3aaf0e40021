/* OHIF 3.13 configuration for the zero-trust DICOMweb gateway (docs/viewer.md).
 *
 * Rendered by dicomweb_gateway.viewer at start-up: every double-brace placeholder below is replaced
 * by a JSON string literal (gateway_url, idp_issuer, client_id). Served as /app-config.js with
 * Cache-Control: no-cache. No secrets: the viewer is a public OIDC client (code + PKCE).
 */
(function () {
  'use strict';

  var GATEWAY = {{gateway_url}};
  var ISSUER = {{idp_issuer}};
  var CLIENT_ID = {{client_id}};
  var DICOMWEB = GATEWAY + '/dicom-web';

  // sessionStorage keys shared with /break-glass (break-glass.js).
  var STEP_UP_KEY = 'zt-step-up'; // {acr_values, max_age}: the next sign-in asks for more
  var BREAK_GLASS_KEY = 'zt-break-glass'; // {study, reason}: grant to request after fresh MFA
  var BANNER_ID = 'zt-viewer-alert';

  function readJson(key) {
    try {
      return JSON.parse(window.sessionStorage.getItem(key) || 'null');
    } catch (e) {
      return null;
    }
  }

  var oidc = {
    authority: ISSUER,
    client_id: CLIENT_ID,
    // Exactly the URIs registered for the client in idp/realm.yaml.
    redirect_uri: GATEWAY + '/callback',
    post_logout_redirect_uri: GATEWAY + '/',
    // 'code' selects oidc-client-ts: authorization code with PKCE (S256), no implicit flow.
    response_type: 'code',
    scope: 'openid profile user/ImagingStudy.rs',
    // Clinical images need at least password + second factor (OMB M-22-09; CONTROLS ID-3).
    // A step-up below may raise this to the phishing-resistant level.
    acr_values: 'urn:zt:acr:mfa',
    // RFC 8707: the access token's audience is the gateway.
    resource: GATEWAY,
    automaticSilentRenew: true,
    revokeAccessTokenOnSignout: true,
    // RFC 7009 revocation answers 200 with an empty text/plain body (oidc-provider); without
    // this oidc-client-ts rejects the answer and never reaches the IdP's logout.
    revokeTokenAdditionalContentTypes: ['text/plain'],
    // No check-session iframe: the CSP allows no frames.
    monitorSession: false,
    loadUserInfo: false,
  };

  // A pending step-up (RFC 9470) set by onHttpError or the break-glass page: this page load is
  // the one that starts the new sign-in, so apply it once and forget it.
  var stepUp = readJson(STEP_UP_KEY);
  if (stepUp) {
    window.sessionStorage.removeItem(STEP_UP_KEY);
    if (stepUp.acr_values) {
      oidc.acr_values = String(stepUp.acr_values);
    }
    if (stepUp.max_age !== undefined && stepUp.max_age !== null) {
      oidc.max_age = Number(stepUp.max_age);
    }
    oidc.prompt = 'login';
  }

  // Launch from the EMR (issue 19, docs/viewer.md): the EMR opens a new tab on
  // /viewer?StudyInstanceUIDs=<uid>&launch=<uid>. On the tab's first load, before anyone is
  // signed in, the launch context becomes this tab's study: every sign-in of the tab (the first,
  // step-ups, after expiry) asks the IdP for the parameterized scope study:<uid>, so the token
  // reaches that study and nothing else. Later loads ignore `launch`: editing the URL to another
  // study changes nothing but the study OHIF asks for, which the gateway then refuses.
  var LAUNCH_KEY = 'zt-launch-study';
  var launched = window.sessionStorage.getItem(LAUNCH_KEY);
  var launch = new URLSearchParams(window.location.search).get('launch');
  var UID_GRAMMAR = /^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$/;
  if (!launched && launch && launch.length <= 64 && UID_GRAMMAR.test(launch) && !accessToken()) {
    launched = launch;
    window.sessionStorage.setItem(LAUNCH_KEY, launched);
  }
  if (launched && UID_GRAMMAR.test(launched)) {
    oidc.scope += ' study:' + launched;
  }

  function forgetUser() {
    // oidc-client-ts keeps the signed-in user in sessionStorage under "oidc.user:<iss>:<client>".
    window.sessionStorage.removeItem('oidc.user:' + ISSUER + ':' + CLIENT_ID);
  }

  // The study a refused DICOMweb request was about: from its URL (OHIF may already have left
  // the viewer route for its "study not found" page), else from the viewer's own URL.
  function refusedStudy(request) {
    var url = (request && request.responseURL) || '';
    var m = /\/dicom-web\/studies\/([0-9.]+)/.exec(url);
    if (!m) {
      m = /[?&]StudyInstanceUID=([0-9.]+)/.exec(url);
    }
    if (m) {
      return m[1];
    }
    var params = new URLSearchParams(window.location.search);
    var uids = params.get('StudyInstanceUIDs') || params.get('studyInstanceUIDs') || '';
    return uids.split(',')[0] || null;
  }

  function accessToken() {
    var user = readJson('oidc.user:' + ISSUER + ':' + CLIENT_ID);
    return user && user.access_token ? user.access_token : null;
  }

  function showAlert(kind, text, link) {
    if (document.getElementById(BANNER_ID)) {
      return;
    }
    var box = document.createElement('div');
    box.id = BANNER_ID;
    box.setAttribute('role', 'alert');
    box.setAttribute('data-state', kind);
    box.style.cssText =
      'position:fixed;top:0;left:0;right:0;z-index:100000;padding:12px 16px;' +
      'background:#7f1d1d;color:#fff;font:14px sans-serif;text-align:center';
    box.appendChild(document.createTextNode(text));
    if (link) {
      var a = document.createElement('a');
      a.href = link.href;
      a.textContent = link.text;
      a.style.cssText = 'color:#fde68a;margin-left:12px';
      box.appendChild(a);
    }
    (document.body || document.documentElement).appendChild(box);
  }

  function challengeParam(challenge, name) {
    var m = new RegExp(name + '="([^"]*)"').exec(challenge);
    return m ? m[1] : null;
  }

  function openStudy(study) {
    if (study) {
      window.location.assign('/viewer?StudyInstanceUIDs=' + encodeURIComponent(study));
    } else {
      window.location.reload();
    }
  }

  // RFC 9470: sign in again at the level the gateway asks for, then come back to the study
  // (OHIF stores the current path and query as its post-login target before redirecting).
  function startStepUp(challenge, study) {
    if (stepUp) {
      // This page load already follows a step-up sign-in: do not loop through the IdP.
      showAlert('step-up-failed', 'A stronger sign-in is required but could not be obtained.');
      return;
    }
    var maxAge = challengeParam(challenge, 'max_age');
    window.sessionStorage.setItem(
      STEP_UP_KEY,
      JSON.stringify({
        acr_values: challengeParam(challenge, 'acr_values'),
        max_age: maxAge === null ? null : Number(maxAge),
      })
    );
    forgetUser();
    openStudy(study);
  }

  var breakGlassSent = false;

  // After the break-glass page sent the user through a fresh MFA sign-in, the first denial of
  // that study asks the gateway for the emergency grant, then reloads the study.
  function requestBreakGlass(pending) {
    breakGlassSent = true;
    window.sessionStorage.removeItem(BREAK_GLASS_KEY);
    var token = accessToken();
    window
      .fetch(GATEWAY + '/admin/break-glass', {
        method: 'POST',
        headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
        body: JSON.stringify({ study_instance_uid: pending.study, reason: pending.reason }),
      })
      .then(function (response) {
        if (response.ok) {
          openStudy(pending.study);
        } else {
          showAlert('break-glass-refused', 'Break-glass refused (HTTP ' + response.status + ').');
        }
      })
      .catch(function () {
        showAlert('break-glass-refused', 'Break-glass request failed.');
      });
  }

  function onHttpError(error) {
    var status = error && error.status;
    var request = error && error.request;
    var challenge = '';
    if (request && typeof request.getResponseHeader === 'function') {
      challenge = request.getResponseHeader('WWW-Authenticate') || '';
    }
    var study = refusedStudy(request);
    if (status === 401 && challenge.indexOf('insufficient_user_authentication') !== -1) {
      startStepUp(challenge, study);
      return;
    }
    if ((status === 403 || status === 404) && study) {
      var pending = readJson(BREAK_GLASS_KEY);
      if (pending && pending.study === study && !breakGlassSent) {
        requestBreakGlass(pending);
        return;
      }
      showAlert('access-denied', 'Access denied: you may not open this study.', {
        href: '/break-glass?study=' + encodeURIComponent(study),
        text: 'Emergency access (break-glass)',
      });
    }
  }

  window.config = {
    routerBasename: '/',
    extensions: [],
    modes: [],
    // No onboarding tour: it covers the image on a clinical workstation (and in screenshots).
    customizationService: { 'ohif.tours': { $set: [] } },
    showStudyList: true,
    maxNumberOfWebWorkers: 2,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    investigationalUseDialog: { option: 'never' },
    maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
    showErrorDetails: 'production',
    defaultDataSourceName: 'gateway',
    oidc: [oidc],
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'gateway',
        configuration: {
          friendlyName: 'Zero-trust DICOMweb gateway',
          name: 'gateway',
          // Same origin only: the gateway is the one door (the archive sends no CORS headers).
          wadoUriRoot: GATEWAY + '/wado',
          qidoRoot: DICOMWEB,
          wadoRoot: DICOMWEB,
          // What Orthanc's DICOMweb plugin 1.7 behind the gateway really supports.
          qidoSupportsIncludeField: false,
          supportsReject: false,
          supportsStow: false,
          dicomUploadEnabled: false,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          // Series first (QIDO with includefield=00080021,00080031), then each series'
          // metadata: the first image shows before the whole study's metadata arrived.
          enableStudyLazyLoad: true,
          staticWado: false,
          singlepart: false,
          bulkDataURI: { enabled: true, relativeResolution: 'studies' },
          omitQuotationForMultipartRequest: true,
        },
      },
    ],
    httpErrorHandler: onHttpError,
  };
})();
