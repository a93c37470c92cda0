// TLS for the router's fast path (Sources/Node/Router/Fast), over Debian's OpenSSL (libssl-dev):
// server contexts, non-blocking sessions on the loop's own sockets, SNI and client certificates.
// OpenSSL's API is macros and variadic controls in places; these wrappers give Swift plain calls.
#ifndef CFASTTLS_H
#define CFASTTLS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ftls_ctx ftls_ctx;   // an SSL_CTX
typedef struct ftls_conn ftls_conn; // an SSL

enum {
    FTLS_WANT_READ = -1,
    FTLS_WANT_WRITE = -2,
    FTLS_CLOSED = -3,   // the peer closed (close_notify or EOF)
    FTLS_FAILED = -4,   // a protocol or system error (ftls_last_error says which)
};

/// Picks the context for a ClientHello's server name (SNI); returns NULL to keep the default, or a context
/// with a reference for the caller (ftls_ctx_retain), which the handshake drops once the session holds its own.
/// Called on the loop thread during the handshake; `arg` is the one given to ftls_ctx_set_sni.
typedef ftls_ctx *(*ftls_sni_fn)(void *arg, const char *server_name);

/// A server context from PEM text: the certificate chain, the key and (optionally) the CA that signs
/// client certificates (`ca_len` 0: none asked for; `ca_required` 1: the handshake fails without one).
/// TLS 1.2 and 1.3, no renegotiation, no compression, session tickets, ALPN http/1.1.
/// NULL with a reason in `error` (size `error_len`).
ftls_ctx *ftls_ctx_new(const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                       const char *ca_pem, size_t ca_len, int ca_required, char *error, size_t error_len);
void ftls_ctx_set_sni(ftls_ctx *ctx, ftls_sni_fn fn, void *arg);
void ftls_ctx_retain(ftls_ctx *ctx);
/// Drops a reference (sessions hold their own: a context is freed after its last session).
void ftls_ctx_free(ftls_ctx *ctx);

/// A server session on a connected non-blocking socket (NULL when out of memory).
ftls_conn *ftls_conn_new(ftls_ctx *ctx, int fd);
/// Sends close_notify without waiting for the peer's (best effort), then frees the session (not the fd).
void ftls_conn_free(ftls_conn *conn, int notify);

/// Continues the handshake: 1 done, or FTLS_WANT_READ / FTLS_WANT_WRITE / FTLS_CLOSED / FTLS_FAILED.
int ftls_handshake(ftls_conn *conn);
/// Bytes read (> 0), or FTLS_WANT_READ / FTLS_WANT_WRITE / FTLS_CLOSED / FTLS_FAILED.
long ftls_read(ftls_conn *conn, void *buf, size_t len);
/// Bytes written (> 0, may be fewer than `len`), or FTLS_WANT_READ / FTLS_WANT_WRITE / FTLS_FAILED.
/// After a WANT result, retry with the same bytes first (more may follow them).
long ftls_write(ftls_conn *conn, const void *buf, size_t len);
/// Plaintext already decrypted and waiting in the session.
int ftls_pending(ftls_conn *conn);

/// The SNI server name the client sent, or NULL.
const char *ftls_server_name(ftls_conn *conn);
/// The verified client certificate's subject in OpenSSL's one-line form (`/C=IT/O=Example/CN=alice`)
/// written NUL-terminated into `buf`, and its DER encoding; 0 when there is none (or it does not fit).
size_t ftls_peer_subject(ftls_conn *conn, char *buf, size_t len);
size_t ftls_peer_der(ftls_conn *conn, unsigned char *buf, size_t len);
/// The subject of a DER certificate in OpenSSL's one-line form (X509_NAME_oneline, as ftls_peer_subject and uWSGI's
/// HTTPS_DN); 0 when `der` is not a certificate.
size_t ftls_der_subject(const unsigned char *der, size_t der_len, char *buf, size_t len);
/// The negotiated protocol version ("TLSv1.3"), and whether the session was resumed.
const char *ftls_version(ftls_conn *conn);
int ftls_resumed(ftls_conn *conn);
/// The reason of the last FTLS_FAILED on this thread (OpenSSL's error queue, emptied).
size_t ftls_last_error(char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
