#include "ccurl.h"
#include <curl/curl.h>
#include <string.h>
#include <stdio.h>

struct sink { char *buf; size_t cap; size_t len; };

static size_t collect(char *data, size_t size, size_t n, void *userdata) {
    struct sink *s = userdata;
    size_t total = size * n;
    if (s->cap > 0 && s->len + 1 < s->cap) {
        size_t room = s->cap - 1 - s->len;
        size_t take = total < room ? total : room;
        memcpy(s->buf + s->len, data, take);
        s->len += take;
        s->buf[s->len] = 0;
    }
    return total;   // keep reading: the rest of an overlong answer is dropped, not an error
}

void ccurl_global_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

int ccurl_request(const char *method, const char *url, const char *const *headers, int header_count,
                  const char *body, size_t body_len, long timeout_ms, long *status,
                  char *response, size_t response_cap, char *error, size_t error_cap) {
    *status = 0;
    if (error_cap > 0) error[0] = 0;
    if (response_cap > 0) response[0] = 0;
    CURL *curl = curl_easy_init();
    if (!curl) { snprintf(error, error_cap, "curl_easy_init failed"); return CURLE_FAILED_INIT; }
    char errbuf[CURL_ERROR_SIZE] = {0};
    struct curl_slist *list = NULL;
    for (int i = 0; i < header_count; i++) list = curl_slist_append(list, headers[i]);
    struct sink s = { response, response_cap, 0 };
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 5000 ? timeout_ms : 5000L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "legion-alarms/1");
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &s);
    if (list) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    CURLcode rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
    } else {
        snprintf(error, error_cap, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }
    curl_slist_free_all(list);
    curl_easy_cleanup(curl);
    return (int)rc;
}
