#include "clegionaead.h"

#include <limits.h>
#include <stdlib.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

struct lgaead {
    EVP_CIPHER_CTX *seal;
    EVP_CIPHER_CTX *open;
};

void lgaead_free(lgaead *ctx) {
    if (!ctx) return;
    EVP_CIPHER_CTX_free(ctx->seal);
    EVP_CIPHER_CTX_free(ctx->open);
    free(ctx);
}

lgaead *lgaead_new(const uint8_t *key32) {
    lgaead *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) return NULL;
    ctx->seal = EVP_CIPHER_CTX_new();
    ctx->open = EVP_CIPHER_CTX_new();
    if (!ctx->seal || !ctx->open
        || EVP_EncryptInit_ex(ctx->seal, EVP_aes_256_gcm(), NULL, key32, NULL) != 1
        || EVP_DecryptInit_ex(ctx->open, EVP_aes_256_gcm(), NULL, key32, NULL) != 1) {
        lgaead_free(ctx);
        return NULL;
    }
    return ctx;
}

int lgaead_seal(lgaead *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
                uint8_t *nonce_out, uint8_t *out, uint8_t *tag_out) {
    int len = 0;
    if (in_len > INT_MAX || aad_len > INT_MAX) return 0;
    if (RAND_bytes(nonce_out, LGAEAD_NONCE) != 1) return 0;
    // The key schedule stays; only the nonce changes (a NULL cipher and key keep the ones set at creation).
    if (EVP_EncryptInit_ex(ctx->seal, NULL, NULL, NULL, nonce_out) != 1) return 0;
    if (aad_len > 0 && EVP_EncryptUpdate(ctx->seal, NULL, &len, aad, (int)aad_len) != 1) return 0;
    if (in_len > 0 && EVP_EncryptUpdate(ctx->seal, out, &len, in, (int)in_len) != 1) return 0;
    if (EVP_EncryptFinal_ex(ctx->seal, out + (in_len > 0 ? len : 0), &len) != 1) return 0;
    return EVP_CIPHER_CTX_ctrl(ctx->seal, EVP_CTRL_GCM_GET_TAG, LGAEAD_TAG, tag_out) == 1;
}

int lgaead_open(lgaead *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *nonce, const uint8_t *in, size_t in_len,
                const uint8_t *tag, uint8_t *out) {
    int len = 0;
    if (in_len > INT_MAX || aad_len > INT_MAX) return 0;
    if (EVP_DecryptInit_ex(ctx->open, NULL, NULL, NULL, nonce) != 1) return 0;
    if (aad_len > 0 && EVP_DecryptUpdate(ctx->open, NULL, &len, aad, (int)aad_len) != 1) return 0;
    if (in_len > 0 && EVP_DecryptUpdate(ctx->open, out, &len, in, (int)in_len) != 1) return 0;
    if (EVP_CIPHER_CTX_ctrl(ctx->open, EVP_CTRL_GCM_SET_TAG, LGAEAD_TAG, (void *)tag) != 1) return 0;
    return EVP_DecryptFinal_ex(ctx->open, out + (in_len > 0 ? len : 0), &len) == 1;
}
