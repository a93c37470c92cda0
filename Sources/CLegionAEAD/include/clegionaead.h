// AES-256-GCM for the Legion protocol thread, over Debian's OpenSSL (libssl-dev's libcrypto): the key schedule
// is set up once per key and kept, nonces come from OpenSSL's user-space CSPRNG (no system call per packet).
// One context is used by one thread at a time (the caller serialises).
#ifndef CLEGIONAEAD_H
#define CLEGIONAEAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lgaead lgaead;

enum { LGAEAD_NONCE = 12, LGAEAD_TAG = 16 };

/// A context for a 32-byte key; NULL when OpenSSL cannot set it up.
lgaead *lgaead_new(const uint8_t *key32);
void lgaead_free(lgaead *ctx);

/// Seals `in` (`in_len` bytes) with `aad` authenticated: writes a fresh random nonce to `nonce_out`, the ciphertext
/// (same length as `in`) to `out` and the tag to `tag_out`. 1 on success, 0 on failure.
int lgaead_seal(lgaead *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
                uint8_t *nonce_out, uint8_t *out, uint8_t *tag_out);

/// Opens `in` (`in_len` bytes) sealed with `nonce` and `tag`, `aad` authenticated: the plaintext goes to `out`
/// (same length). 1 when authentic, 0 otherwise (nothing in `out` may be used then).
int lgaead_open(lgaead *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *nonce, const uint8_t *in, size_t in_len,
                const uint8_t *tag, uint8_t *out);

#ifdef __cplusplus
}
#endif

#endif
