#include "cfasttls.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

struct sni_hook {
    ftls_sni_fn fn;
    void *arg;
};

static int sni_index = -1;
static pthread_once_t sni_once = PTHREAD_ONCE_INIT;

static void sni_hook_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp) {
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    free(ptr);
}

static void sni_setup(void) { sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_hook_free); }

static void set_error(char *error, size_t len, const char *what) {
    if (!error || len == 0) return;
    unsigned long code = ERR_get_error();
    if (code) {
        char reason[200];
        ERR_error_string_n(code, reason, sizeof reason);
        snprintf(error, len, "%s (%s)", what, reason);
    } else {
        snprintf(error, len, "%s", what);
    }
    ERR_clear_error();
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen,
                       void *arg) {
    (void)ssl; (void)arg;
    static const unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    unsigned char *selected = NULL;
    if (SSL_select_next_proto(&selected, outlen, http11, sizeof http11, in, inlen) != OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;  // the client offers only protocols we do not speak (h2): no ALPN, HTTP/1.1
    }
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

static int servername(SSL *ssl, int *alert, void *arg) {
    (void)alert; (void)arg;
    SSL_CTX *current = SSL_get_SSL_CTX(ssl);
    struct sni_hook *hook = sni_index >= 0 ? SSL_CTX_get_ex_data(current, sni_index) : NULL;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!hook || !name) return SSL_TLSEXT_ERR_OK;
    SSL_CTX *chosen = (SSL_CTX *)hook->fn(hook->arg, name);
    if (chosen) {
        if (chosen != current) {
            SSL_set_SSL_CTX(ssl, chosen);  // the session takes its own reference
            // Verification is per session once it exists: take the chosen context's (client certificates).
            SSL_set_verify(ssl, SSL_CTX_get_verify_mode(chosen), NULL);
        }
        SSL_CTX_free(chosen);  // the reference the hook gave us
    }
    return SSL_TLSEXT_ERR_OK;
}

ftls_ctx *ftls_ctx_new(const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                       const char *ca_pem, size_t ca_len, int ca_required, char *error, size_t error_len) {
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        set_error(error, error_len, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                             SSL_OP_IGNORE_UNEXPECTED_EOF);
    // Partial writes over a buffer that may move between retries (the connection's output buffer grows);
    // idle connections give their record buffers back.
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);

    BIO *bio = BIO_new_mem_buf(cert_pem, (int)cert_len);
    X509 *leaf = bio ? PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL) : NULL;
    if (!leaf || SSL_CTX_use_certificate(ctx, leaf) != 1) {
        set_error(error, error_len, "no usable PEM certificate");
        X509_free(leaf);
        BIO_free(bio);
        SSL_CTX_free(ctx);
        return NULL;
    }
    X509_free(leaf);
    X509 *extra;
    while ((extra = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add0_chain_cert(ctx, extra) != 1) X509_free(extra);
    }
    ERR_clear_error();  // the end of the PEM text
    BIO_free(bio);

    bio = BIO_new_mem_buf(key_pem, (int)key_len);
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!key || SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        set_error(error, error_len, "the private key is unreadable or does not match the certificate");
        EVP_PKEY_free(key);
        SSL_CTX_free(ctx);
        return NULL;
    }
    EVP_PKEY_free(key);

    // Sessions resume only in a context of the same kind: one that checks client certificates has its
    // own id context, so a session made without a certificate cannot be resumed where one is needed.
    static const unsigned char plain_id[] = "legion";
    static const unsigned char auth_id[] = "legion-client-auth";
    if (ca_len > 0) {
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        bio = BIO_new_mem_buf(ca_pem, (int)ca_len);
        int count = 0;
        X509 *ca;
        while (bio && (ca = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
            X509_STORE_add_cert(store, ca);
            SSL_CTX_add_client_CA(ctx, ca);  // the CA names sent in the certificate request
            X509_free(ca);
            count++;
        }
        ERR_clear_error();
        BIO_free(bio);
        if (count == 0) {
            set_error(error, error_len, "no PEM certificate in the client CA");
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (ca_required ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
        SSL_CTX_set_session_id_context(ctx, auth_id, sizeof auth_id - 1);
    } else {
        SSL_CTX_set_session_id_context(ctx, plain_id, sizeof plain_id - 1);
    }
    return (ftls_ctx *)ctx;
}

void ftls_ctx_set_sni(ftls_ctx *ctx, ftls_sni_fn fn, void *arg) {
    pthread_once(&sni_once, sni_setup);
    SSL_CTX *c = (SSL_CTX *)ctx;
    struct sni_hook *hook = calloc(1, sizeof *hook);
    if (!hook) return;
    hook->fn = fn;
    hook->arg = arg;
    SSL_CTX_set_ex_data(c, sni_index, hook);
    SSL_CTX_set_tlsext_servername_callback(c, servername);
}

void ftls_ctx_retain(ftls_ctx *ctx) { SSL_CTX_up_ref((SSL_CTX *)ctx); }

void ftls_ctx_free(ftls_ctx *ctx) { SSL_CTX_free((SSL_CTX *)ctx); }

ftls_conn *ftls_conn_new(ftls_ctx *ctx, int fd) {
    SSL *ssl = SSL_new((SSL_CTX *)ctx);
    if (!ssl) return NULL;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return (ftls_conn *)ssl;
}

void ftls_conn_free(ftls_conn *conn, int notify) {
    SSL *ssl = (SSL *)conn;
    if (notify && SSL_is_init_finished(ssl)) {
        ERR_clear_error();
        (void)SSL_shutdown(ssl);  // our close_notify; the peer's is not awaited
    }
    ERR_clear_error();
    SSL_free(ssl);
}

static int outcome(SSL *ssl, int ret) {
    switch (SSL_get_error(ssl, ret)) {
    case SSL_ERROR_WANT_READ: return FTLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return FTLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return FTLS_CLOSED;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && (errno == 0 || errno == ECONNRESET || errno == EPIPE)) return FTLS_CLOSED;
        return FTLS_FAILED;
    default: return FTLS_FAILED;
    }
}

int ftls_handshake(ftls_conn *conn) {
    SSL *ssl = (SSL *)conn;
    ERR_clear_error();
    errno = 0;
    int ret = SSL_do_handshake(ssl);
    return ret == 1 ? 1 : outcome(ssl, ret);
}

long ftls_read(ftls_conn *conn, void *buf, size_t len) {
    SSL *ssl = (SSL *)conn;
    ERR_clear_error();
    errno = 0;
    size_t got = 0;
    int ret = SSL_read_ex(ssl, buf, len, &got);
    return ret == 1 ? (long)got : outcome(ssl, ret);
}

long ftls_write(ftls_conn *conn, const void *buf, size_t len) {
    SSL *ssl = (SSL *)conn;
    ERR_clear_error();
    errno = 0;
    size_t done = 0;
    int ret = SSL_write_ex(ssl, buf, len, &done);
    if (ret == 1) return (long)done;
    int result = outcome(ssl, ret);
    return result == FTLS_CLOSED ? FTLS_FAILED : result;
}

int ftls_pending(ftls_conn *conn) { return SSL_pending((SSL *)conn); }

const char *ftls_server_name(ftls_conn *conn) { return SSL_get_servername((SSL *)conn, TLSEXT_NAMETYPE_host_name); }

size_t ftls_peer_subject(ftls_conn *conn, char *buf, size_t len) {
    SSL *ssl = (SSL *)conn;
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (!peer || SSL_get_verify_result(ssl) != X509_V_OK || len == 0) return 0;
    if (!X509_NAME_oneline(X509_get_subject_name(peer), buf, (int)len)) return 0;
    return strlen(buf);
}

size_t ftls_der_subject(const unsigned char *der, size_t der_len, char *buf, size_t len) {
    if (!der || der_len == 0 || der_len > (size_t)LONG_MAX || len == 0) return 0;
    const unsigned char *p = der;
    X509 *cert = d2i_X509(NULL, &p, (long)der_len);
    if (!cert) return 0;
    size_t n = X509_NAME_oneline(X509_get_subject_name(cert), buf, (int)len) ? strlen(buf) : 0;
    X509_free(cert);
    return n;
}

size_t ftls_peer_der(ftls_conn *conn, unsigned char *buf, size_t len) {
    SSL *ssl = (SSL *)conn;
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (!peer || SSL_get_verify_result(ssl) != X509_V_OK) return 0;
    int need = i2d_X509(peer, NULL);
    if (need <= 0 || (size_t)need > len) return 0;
    unsigned char *out = buf;
    return (size_t)i2d_X509(peer, &out);
}

const char *ftls_version(ftls_conn *conn) { return SSL_get_version((SSL *)conn); }

int ftls_resumed(ftls_conn *conn) { return SSL_session_reused((SSL *)conn); }

size_t ftls_last_error(char *buf, size_t len) {
    if (len == 0) return 0;
    unsigned long code = ERR_get_error();
    if (!code) {
        snprintf(buf, len, "%s", errno ? strerror(errno) : "connection failed");
    } else {
        ERR_error_string_n(code, buf, len);
    }
    ERR_clear_error();
    return strlen(buf);
}
