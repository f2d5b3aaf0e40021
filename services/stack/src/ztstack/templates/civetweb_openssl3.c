/* Debian 12's civetweb 1.15 (Orthanc's HTTP server) loads OpenSSL with dlopen("libssl.so") and
 * looks up SSL_get_peer_certificate, which OpenSSL 3 only provides as a macro. The null function
 * pointer crashes Orthanc on the first HTTPS connection. This shim is found first through
 * LD_LIBRARY_PATH, forwards to SSL_get1_peer_certificate (same reference semantics), and pulls
 * in the real libssl.so.3 for every other symbol. */
typedef struct ssl_st SSL;
typedef struct x509_st X509;
extern X509 *SSL_get1_peer_certificate(const SSL *s);
X509 *SSL_get_peer_certificate(const SSL *s) { return SSL_get1_peer_certificate(s); }
