#ifndef CCURL_H
#define CCURL_H
#include <stddef.h>

/// One HTTP(S) request through libcurl (Debian's libcurl4-openssl-dev): no redirects, http/https only,
/// `timeout_ms` for the whole exchange, TLS verified against the system CA store. `headers` is a
/// NUL-separated list of "Name: value" lines (header_count of them). On return `*status` is the HTTP status
/// (0 when no response came), `error` holds curl's message (empty on success). Returns the CURLcode.
int ccurl_request(const char *method, const char *url, const char *const *headers, int header_count,
                  const char *body, size_t body_len, long timeout_ms, long *status,
                  char *response, size_t response_cap, char *error, size_t error_cap);

/// curl_global_init; call once before threads use ccurl_request.
void ccurl_global_init(void);
#endif
