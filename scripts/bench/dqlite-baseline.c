/*
 * dqlite-baseline: raw C client for dqlite's wire protocol (version 1), used as the
 * baseline of the replicated-write benchmark. Written from the protocol description in
 * the dqlite feasibility notes (wire protocol section); no code from other projects.
 *
 * Build:  cc -O2 -pthread -o dqlite-baseline dqlite-baseline.c      (C11, no external libs)
 *
 * What it does:
 *   1. asks every node in --nodes for the leader (LEADER request; 1 s connect timeout,
 *      TCP_NODELAY) and confirms the answer with the leader itself;
 *   2. each of --clients threads opens its own connection to the leader: handshake
 *      (protocol 1), CLIENT -> WELCOME, OPEN <db> -> DB; thread 0 first creates the table
 *      (EXEC_SQL without parameters);
 *   3. after all threads are ready, each thread runs its share of --writes sequential
 *      autocommit INSERTs (EXEC_SQL with a parameter tuple: client, seq, ~100-byte text) and
 *      times each one from sending the request until the RESULT arrives (rows_affected must
 *      be 1). dqlite allows one write transaction at a time and answers a concurrent writer
 *      with FAILURE 5 (SQLITE_BUSY, "database is locked"), expecting the client to retry: such
 *      an INSERT is resent after a short jittered pause and its latency includes the retries
 *      (--no-busy-retry makes SQLITE_BUSY fatal instead);
 *   4. prints one line on stdout:
 *      baseline clients=N writes=M writes_per_s=X p50_ms=Y p99_ms=Z
 *      (writes_per_s = M / wall time of the write phase; nearest-rank percentiles over all writes).
 *
 * Exit status: 0 ok; 1 a FAILURE response, a timeout (5 s per read, SO_RCVTIMEO), a closed
 * connection or a protocol error; 2 bad arguments, no reachable node, no leader, or the
 * leader not reachable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define PROG "dqlite-baseline"

#define PROTOCOL_VERSION 1u
#define CONNECT_TIMEOUT_MS 1000
#define IO_TIMEOUT_S 5
#define LEADER_SEARCH_MS 5000
#define MAX_BODY_BYTES (64u * 1024u * 1024u)
#define PAYLOAD_BYTES 100
#define MAX_CLIENTS 1024
#define MAX_WRITES 100000000ul
#define SQLITE_BUSY_CODE 5 /* primary result code; extended codes keep it in the low byte */
#ifndef BUSY_BACKOFF_MIN_US
#define BUSY_BACKOFF_MIN_US 100u
#endif
#ifndef BUSY_BACKOFF_MAX_US
#define BUSY_BACKOFF_MAX_US 2000u
#endif

/* request types */
enum { REQ_LEADER = 0, REQ_CLIENT = 1, REQ_OPEN = 3, REQ_EXEC_SQL = 8 };
/* response types */
enum { RES_FAILURE = 0, RES_SERVER = 1, RES_WELCOME = 2, RES_DB = 4, RES_RESULT = 6 };
/* value type codes */
enum { VAL_INT64 = 1, VAL_TEXT = 3 };

/* ------------------------------------------------------------------------------------------ */
/* errors                                                                                      */

static pthread_mutex_t die_lock = PTHREAD_MUTEX_INITIALIZER;

static void die(int status, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void die(int status, const char *fmt, ...)
{
	va_list ap;
	pthread_mutex_lock(&die_lock); /* first thread to fail reports and exits; others block */
	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
	_exit(status);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* ------------------------------------------------------------------------------------------ */
/* encoding                                                                                    */

typedef struct {
	uint8_t *p;
	size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra)
{
	if (b->len + extra <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra)
		cap *= 2;
	uint8_t *p = realloc(b->p, cap);
	if (p == NULL)
		die(1, "out of memory");
	b->p = p;
	b->cap = cap;
}

static void put_bytes(buf_t *b, const void *src, size_t n)
{
	buf_reserve(b, n);
	memcpy(b->p + b->len, src, n);
	b->len += n;
}

static void put_u8(buf_t *b, uint8_t v) { put_bytes(b, &v, 1); }

static void put_u64(buf_t *b, uint64_t v)
{
	uint8_t w[8];
	for (int i = 0; i < 8; i++)
		w[i] = (uint8_t)(v >> (8 * i));
	put_bytes(b, w, 8);
}

/* zero-pad to a multiple of 8 bytes */
static void put_pad(buf_t *b)
{
	static const uint8_t zero[8];
	size_t rem = b->len % 8;
	if (rem)
		put_bytes(b, zero, 8 - rem);
}

/* text: UTF-8, NUL-terminated, zero-padded to a word */
static void put_text(buf_t *b, const char *s)
{
	put_bytes(b, s, strlen(s) + 1);
	put_pad(b);
}

/* start a request: reserve the header word, filled in by req_finish() */
static void req_begin(buf_t *b)
{
	b->len = 0;
	put_u64(b, 0);
}

static void req_finish(buf_t *b, uint8_t type)
{
	put_pad(b);
	uint64_t words = (b->len - 8) / 8;
	b->p[0] = (uint8_t)words;
	b->p[1] = (uint8_t)(words >> 8);
	b->p[2] = (uint8_t)(words >> 16);
	b->p[3] = (uint8_t)(words >> 24);
	b->p[4] = type;
	b->p[5] = 0; /* schema */
	b->p[6] = 0;
	b->p[7] = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* decoding                                                                                    */

typedef struct {
	const uint8_t *p;
	size_t len, off;
} rd_t;

static bool get_u64(rd_t *r, uint64_t *v)
{
	if (r->len - r->off < 8)
		return false;
	uint64_t x = 0;
	for (int i = 7; i >= 0; i--)
		x = (x << 8) | r->p[r->off + (size_t)i];
	r->off += 8;
	*v = x;
	return true;
}

static bool get_u32(rd_t *r, uint32_t *v)
{
	if (r->len - r->off < 4)
		return false;
	const uint8_t *q = r->p + r->off;
	*v = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
	r->off += 4;
	return true;
}

/* returns a pointer into the body (NUL-terminated) or NULL if malformed */
static const char *get_text(rd_t *r)
{
	const uint8_t *start = r->p + r->off;
	const uint8_t *nul = memchr(start, 0, r->len - r->off);
	if (nul == NULL)
		return NULL;
	size_t n = (size_t)(nul - start) + 1;
	n = (n + 7) & ~(size_t)7;
	if (n > r->len - r->off)
		return NULL;
	r->off += n;
	return (const char *)start;
}

/* ------------------------------------------------------------------------------------------ */
/* connections                                                                                 */

typedef struct {
	int fd;
	char addr[128];
	buf_t out;     /* request being built / sent */
	buf_t in;      /* last response body */
	char err[512]; /* last error */
	uint64_t fail_code;
} conn_t;

static void conn_close(conn_t *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static void conn_free(conn_t *c)
{
	conn_close(c);
	free(c->out.p);
	free(c->in.p);
	memset(&c->out, 0, sizeof c->out);
	memset(&c->in, 0, sizeof c->in);
}

/* split "host:port" / "[v6]:port"; returns false if malformed */
static bool split_addr(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
	const char *colon = strrchr(addr, ':');
	if (colon == NULL || colon == addr || colon[1] == '\0')
		return false;
	const char *h = addr;
	size_t hl = (size_t)(colon - addr);
	if (h[0] == '[') {
		if (hl < 3 || h[hl - 1] != ']')
			return false;
		h++;
		hl -= 2;
	}
	const char *p = colon + 1;
	size_t pl = strlen(p);
	if (hl == 0 || hl >= hostlen || pl >= portlen)
		return false;
	char *end;
	errno = 0;
	unsigned long pv = strtoul(p, &end, 10);
	if (errno || *end != '\0' || pv == 0 || pv > 65535 || p[0] < '0' || p[0] > '9')
		return false;
	memcpy(host, h, hl);
	host[hl] = '\0';
	memcpy(port, p, pl + 1);
	return true;
}

static int send_all(conn_t *c, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				snprintf(c->err, sizeof c->err, "%s: send timed out after %d s", c->addr, IO_TIMEOUT_S);
			else
				snprintf(c->err, sizeof c->err, "%s: send: %s", c->addr, strerror(errno));
			return -1;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int recv_all(conn_t *c, uint8_t *p, size_t n, const char *what)
{
	while (n > 0) {
		ssize_t k = recv(c->fd, p, n, 0);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				snprintf(c->err, sizeof c->err,
				         "%s: timeout: no complete response to %s within %d s", c->addr, what,
				         IO_TIMEOUT_S);
			else
				snprintf(c->err, sizeof c->err, "%s: recv (%s): %s", c->addr, what, strerror(errno));
			return -1;
		}
		if (k == 0) {
			snprintf(c->err, sizeof c->err, "%s: connection closed by the server while waiting for %s",
			         c->addr, what);
			return -1;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* connect (timeout), TCP_NODELAY, 5 s send/receive timeouts, send the handshake */
static int conn_open(conn_t *c, const char *addr)
{
	char host[256], port[16];
	c->fd = -1;
	c->fail_code = 0;
	snprintf(c->addr, sizeof c->addr, "%s", addr);
	if (!split_addr(addr, host, sizeof host, port, sizeof port)) {
		snprintf(c->err, sizeof c->err, "%s: bad address (expected host:port)", addr);
		return -1;
	}
	struct addrinfo hints = { 0 }, *res = NULL;
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	int gai = getaddrinfo(host, port, &hints, &res);
	if (gai != 0) {
		snprintf(c->err, sizeof c->err, "%s: cannot resolve: %s", addr, gai_strerror(gai));
		return -1;
	}
	int fd = -1;
	snprintf(c->err, sizeof c->err, "%s: no usable address", addr);
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			snprintf(c->err, sizeof c->err, "%s: socket: %s", addr, strerror(errno));
			continue;
		}
		int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
		if (rc != 0 && errno == EINPROGRESS) {
			struct pollfd pfd = { .fd = fd, .events = POLLOUT };
			int pr;
			uint64_t deadline = now_ns() + (uint64_t)CONNECT_TIMEOUT_MS * 1000000u;
			do {
				uint64_t t = now_ns();
				int left = t >= deadline ? 0 : (int)((deadline - t) / 1000000u);
				pr = poll(&pfd, 1, left);
			} while (pr < 0 && errno == EINTR);
			if (pr == 0) {
				snprintf(c->err, sizeof c->err, "%s: connect timed out after %d ms", addr,
				         CONNECT_TIMEOUT_MS);
				close(fd);
				fd = -1;
				continue;
			}
			int soerr = 0;
			socklen_t sl = sizeof soerr;
			if (pr < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
				soerr = errno;
			rc = soerr ? -1 : 0;
			errno = soerr;
		}
		if (rc != 0) {
			snprintf(c->err, sizeof c->err, "%s: connect: %s", addr, strerror(errno));
			close(fd);
			fd = -1;
			continue;
		}
		break;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return -1;

	int fl = fcntl(fd, F_GETFL);
	int one = 1;
	struct timeval tv = { IO_TIMEOUT_S, 0 };
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
		snprintf(c->err, sizeof c->err, "%s: socket setup: %s", addr, strerror(errno));
		close(fd);
		return -1;
	}
	c->fd = fd;

	/* handshake: protocol version, uint64 little endian */
	c->out.len = 0;
	put_u64(&c->out, PROTOCOL_VERSION);
	if (send_all(c, c->out.p, c->out.len) != 0) {
		conn_close(c);
		return -1;
	}
	return 0;
}

static const char *res_name(unsigned t)
{
	switch (t) {
	case RES_FAILURE: return "FAILURE";
	case RES_SERVER: return "SERVER";
	case RES_WELCOME: return "WELCOME";
	case 3: return "SERVERS";
	case RES_DB: return "DB";
	case 5: return "STMT";
	case RES_RESULT: return "RESULT";
	case 7: return "ROWS";
	case 8: return "EMPTY";
	case 9: return "FILES";
	case 10: return "METADATA";
	default: return "?";
	}
}

/*
 * Send the request in c->out (built with req_begin/req_finish) and read one full response
 * (header, then body) into c->in; *body reads it.
 * Returns 0 if the response has type `expect`; -2 on a FAILURE response (c->fail_code and
 * c->err set); -1 on I/O, timeout or protocol errors (c->err set).
 */
static int roundtrip(conn_t *c, unsigned expect, const char *what, rd_t *body)
{
	if (send_all(c, c->out.p, c->out.len) != 0)
		return -1;
	uint8_t hdr[8];
	if (recv_all(c, hdr, sizeof hdr, what) != 0)
		return -1;
	uint32_t words = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 |
	                 (uint32_t)hdr[3] << 24;
	unsigned type = hdr[4];
	if ((uint64_t)words * 8 > MAX_BODY_BYTES) {
		snprintf(c->err, sizeof c->err, "%s: response to %s: implausible body size %" PRIu32 " words",
		         c->addr, what, words);
		return -1;
	}
	size_t n = (size_t)words * 8;
	c->in.len = 0;
	buf_reserve(&c->in, n ? n : 1);
	if (n && recv_all(c, c->in.p, n, what) != 0)
		return -1;
	c->in.len = n;
	*body = (rd_t){ c->in.p, n, 0 };

	if (type == RES_FAILURE) {
		uint64_t code = 0;
		const char *msg = NULL;
		if (!get_u64(body, &code) || (msg = get_text(body)) == NULL)
			msg = "(malformed FAILURE response)";
		c->fail_code = code;
		snprintf(c->err, sizeof c->err, "%s: %s failed: error %" PRIu64 ": %s", c->addr, what, code, msg);
		return -2;
	}
	if (type != expect) {
		snprintf(c->err, sizeof c->err, "%s: %s: unexpected response type %u (%s), expected %u (%s)",
		         c->addr, what, type, res_name(type), expect, res_name(expect));
		return -1;
	}
	return 0;
}

static void malformed(conn_t *c, const char *what)
{
	snprintf(c->err, sizeof c->err, "%s: malformed %s response", c->addr, what);
}

/* LEADER -> SERVER. On success copies the leader's address into out ("" = unknown). */
static int req_leader(conn_t *c, uint64_t *id, char *out, size_t outlen)
{
	rd_t r;
	req_begin(&c->out);
	put_u64(&c->out, 0); /* unused */
	req_finish(&c->out, REQ_LEADER);
	int rc = roundtrip(c, RES_SERVER, "LEADER", &r);
	if (rc != 0)
		return rc;
	const char *a;
	if (!get_u64(&r, id) || (a = get_text(&r)) == NULL) {
		malformed(c, "SERVER");
		return -1;
	}
	snprintf(out, outlen, "%s", a);
	return 0;
}

static int req_client(conn_t *c, uint64_t client_id)
{
	rd_t r;
	uint64_t hb;
	req_begin(&c->out);
	put_u64(&c->out, client_id);
	req_finish(&c->out, REQ_CLIENT);
	int rc = roundtrip(c, RES_WELCOME, "CLIENT", &r);
	if (rc != 0)
		return rc;
	if (!get_u64(&r, &hb)) {
		malformed(c, "WELCOME");
		return -1;
	}
	return 0;
}

static int req_open(conn_t *c, const char *name, uint64_t *db_id)
{
	rd_t r;
	uint32_t id;
	req_begin(&c->out);
	put_text(&c->out, name);
	put_u64(&c->out, 0); /* flags (unused) */
	put_text(&c->out, ""); /* vfs (unused) */
	req_finish(&c->out, REQ_OPEN);
	int rc = roundtrip(c, RES_DB, "OPEN", &r);
	if (rc != 0)
		return rc;
	if (!get_u32(&r, &id)) {
		malformed(c, "DB");
		return -1;
	}
	*db_id = id;
	return 0;
}

/* read a RESULT body: u64 last_insert_id, u64 rows_affected */
static int read_result(conn_t *c, rd_t *r, uint64_t *last_id, uint64_t *rows)
{
	if (!get_u64(r, last_id) || !get_u64(r, rows)) {
		malformed(c, "RESULT");
		return -1;
	}
	return 0;
}

/* EXEC_SQL without a parameter tuple */
static int exec_sql_noparams(conn_t *c, uint64_t db, const char *sql, uint64_t *rows)
{
	rd_t r;
	uint64_t last;
	req_begin(&c->out);
	put_u64(&c->out, db);
	put_text(&c->out, sql);
	req_finish(&c->out, REQ_EXEC_SQL);
	int rc = roundtrip(c, RES_RESULT, "EXEC_SQL", &r);
	if (rc != 0)
		return rc;
	return read_result(c, &r, &last, rows);
}

/* ------------------------------------------------------------------------------------------ */
/* configuration                                                                               */

static struct {
	char **nodes; /* point into nodes_buf */
	char *nodes_buf;
	int n_nodes;
	const char *db;
	const char *table;
	unsigned clients;
	unsigned long writes;
	bool verbose;
	bool no_busy_retry;
} cfg;

static char leader_addr[128];
static char insert_sql[256];
static char create_sql[512];
static uint64_t *latencies; /* ns, one per write, grouped by thread */
static pthread_barrier_t ready;

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: " PROG " --nodes HOST:PORT[,HOST:PORT...] [--db NAME] [--clients N] [--writes M]\n"
	        "                       [--table NAME] [--no-busy-retry] [--verbose]\n"
	        "\n"
	        "Raw dqlite wire-protocol (v1) write benchmark. Finds the leader among --nodes, opens one\n"
	        "connection per client thread to it, creates the table if needed, then runs M sequential\n"
	        "autocommit INSERTs split over N threads (EXEC_SQL with parameters: client, seq, ~%d-byte\n"
	        "text) and times each one until its RESULT.\n"
	        "\n"
	        "  --nodes LIST    comma-separated node addresses (required), e.g.\n"
	        "                  127.0.0.1:17301,127.0.0.1:17302,127.0.0.1:17303\n"
	        "  --db NAME       database name (default: legion)\n"
	        "  --clients N     client threads/connections, 1..%d (default: 1)\n"
	        "  --writes M      total INSERTs, N..%lu (default: 1000); thread i does M/N (+1 for the\n"
	        "                  first M%%N threads)\n"
	        "  --table NAME    table (identifier [A-Za-z_][A-Za-z0-9_]*; default: bench_baseline),\n"
	        "                  created as (id INTEGER PRIMARY KEY, client INTEGER, seq INTEGER, payload TEXT)\n"
	        "  --no-busy-retry treat SQLITE_BUSY (\"database is locked\") as fatal instead of retrying\n"
	        "  --verbose       progress on stderr\n"
	        "  --help          this text\n"
	        "\n"
	        "Output (one line on stdout):\n"
	        "  baseline clients=N writes=M writes_per_s=X p50_ms=Y p99_ms=Z\n"
	        "writes_per_s = M / wall time of the write phase; p50/p99 = nearest-rank percentiles of the\n"
	        "per-write latencies (first request sent -> RESULT received, CLOCK_MONOTONIC).\n"
	        "\n"
	        "dqlite serialises write transactions and answers a concurrent writer with FAILURE 5\n"
	        "SQLITE_BUSY (\"database is locked\"), leaving retries to the client. Such an INSERT was\n"
	        "not executed and is resent after a jittered pause (100 us doubling to 2 ms, for at most\n"
	        "%d s); its latency includes the retries. The number of retries goes to stderr.\n"
	        "\n"
	        "Connect timeout %d ms, read timeout %d s, TCP_NODELAY on. Exit status: 0 ok; 1 FAILURE\n"
	        "response (message on stderr), timeout or protocol error; 2 bad arguments, no node reachable,\n"
	        "no leader found or leader unreachable.\n",
	        PAYLOAD_BYTES, MAX_CLIENTS, MAX_WRITES, IO_TIMEOUT_S, CONNECT_TIMEOUT_MS, IO_TIMEOUT_S);
}

static void bad_arg(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void bad_arg(const char *fmt, ...)
{
	va_list ap;
	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n(see " PROG " --help)\n", stderr);
	exit(2);
}

static unsigned long parse_count(const char *opt, const char *v, unsigned long lo, unsigned long hi)
{
	char *end;
	errno = 0;
	if (v[0] < '0' || v[0] > '9')
		bad_arg("%s: not a number: '%s'", opt, v);
	unsigned long x = strtoul(v, &end, 10);
	if (errno || *end != '\0')
		bad_arg("%s: not a number: '%s'", opt, v);
	if (x < lo || x > hi)
		bad_arg("%s: %lu out of range %lu..%lu", opt, x, lo, hi);
	return x;
}

static bool is_identifier(const char *s)
{
	if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
		return false;
	for (const char *p = s + 1; *p; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		      *p == '_'))
			return false;
	return strlen(s) <= 64;
}

static void parse_nodes(const char *list)
{
	char *copy = strdup(list);
	if (copy == NULL)
		die(2, "out of memory");
	cfg.nodes_buf = copy;
	int cap = 8;
	cfg.nodes = malloc(sizeof(char *) * (size_t)cap);
	cfg.n_nodes = 0;
	char *save = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ' || *tok == '\t')
			tok++;
		size_t l = strlen(tok);
		while (l > 0 && (tok[l - 1] == ' ' || tok[l - 1] == '\t'))
			tok[--l] = '\0';
		if (l == 0)
			continue;
		char host[256], port[16];
		if (l >= sizeof(((conn_t *)0)->addr) || !split_addr(tok, host, sizeof host, port, sizeof port))
			bad_arg("--nodes: bad address '%s' (expected HOST:PORT, e.g. 127.0.0.1:17301)", tok);
		if (cfg.n_nodes == cap) {
			cap *= 2;
			cfg.nodes = realloc(cfg.nodes, sizeof(char *) * (size_t)cap);
		}
		if (cfg.nodes == NULL)
			die(2, "out of memory");
		cfg.nodes[cfg.n_nodes++] = tok;
	}
	if (cfg.n_nodes == 0)
		bad_arg("--nodes: empty list");
}

static void parse_args(int argc, char **argv)
{
	const char *nodes = NULL;
	cfg.db = "legion";
	cfg.table = "bench_baseline";
	cfg.clients = 1;
	cfg.writes = 1000;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			exit(0);
		}
		if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
			cfg.verbose = true;
			continue;
		}
		if (strcmp(a, "--no-busy-retry") == 0) {
			cfg.no_busy_retry = true;
			continue;
		}
		static const char *const opts[] = { "--nodes", "--db", "--clients", "--writes", "--table" };
		const char *val = NULL;
		int which = -1;
		for (int k = 0; k < 5 && which < 0; k++) {
			size_t ol = strlen(opts[k]);
			if (strcmp(a, opts[k]) == 0) {
				if (i + 1 >= argc)
					bad_arg("%s needs a value", a);
				val = argv[++i];
				which = k;
			} else if (strncmp(a, opts[k], ol) == 0 && a[ol] == '=') {
				val = a + ol + 1;
				which = k;
			}
		}
		switch (which) {
		case 0: nodes = val; break;
		case 1: cfg.db = val; break;
		case 2: cfg.clients = (unsigned)parse_count("--clients", val, 1, MAX_CLIENTS); break;
		case 3: cfg.writes = parse_count("--writes", val, 1, MAX_WRITES); break;
		case 4: cfg.table = val; break;
		default: bad_arg("unknown argument '%s'", a);
		}
	}
	if (nodes == NULL)
		bad_arg("--nodes is required");
	parse_nodes(nodes);
	if (cfg.db[0] == '\0' || strlen(cfg.db) > 255)
		bad_arg("--db: name must be 1..255 bytes");
	if (!is_identifier(cfg.table))
		bad_arg("--table: '%s' is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*, at most 64)", cfg.table);
	if (cfg.writes < cfg.clients)
		bad_arg("--writes (%lu) must be at least --clients (%u)", cfg.writes, cfg.clients);
}

/* ------------------------------------------------------------------------------------------ */
/* leader discovery                                                                            */

/* Ask every node; confirm a candidate with the candidate itself. Retries for up to 5 s
 * while nodes are reachable but no leader is known. Exits 2 on failure. */
static void find_leader(void)
{
	uint64_t deadline = now_ns() + (uint64_t)LEADER_SEARCH_MS * 1000000u;
	char last_errors[2048] = "";
	for (;;) {
		int reachable = 0;
		last_errors[0] = '\0';
		for (int i = 0; i < cfg.n_nodes; i++) {
			conn_t c = { .fd = -1 };
			char addr[128];
			uint64_t id = 0;
			int rc = conn_open(&c, cfg.nodes[i]);
			if (rc == 0) {
				reachable++;
				rc = req_leader(&c, &id, addr, sizeof addr);
			}
			if (rc != 0) {
				size_t l = strlen(last_errors);
				snprintf(last_errors + l, sizeof last_errors - l, "\n  %s", c.err);
				if (cfg.verbose)
					fprintf(stderr, PROG ": %s\n", c.err);
				conn_free(&c);
				continue;
			}
			conn_free(&c);
			if (cfg.verbose)
				fprintf(stderr, PROG ": %s says leader is id=%" PRIu64 " address='%s'\n",
				        cfg.nodes[i], id, addr);
			if (id == 0 || addr[0] == '\0')
				continue;

			/* confirm with the candidate */
			conn_t l = { .fd = -1 };
			char addr2[128];
			uint64_t id2 = 0;
			rc = conn_open(&l, addr);
			if (rc == 0)
				rc = req_leader(&l, &id2, addr2, sizeof addr2);
			if (rc != 0) {
				size_t n = strlen(last_errors);
				snprintf(last_errors + n, sizeof last_errors - n, "\n  leader candidate %s", l.err);
				conn_free(&l);
				continue;
			}
			conn_free(&l);
			if (id2 == id && strcmp(addr2, addr) == 0) {
				snprintf(leader_addr, sizeof leader_addr, "%s", addr);
				if (cfg.verbose)
					fprintf(stderr, PROG ": leader id=%" PRIu64 " at %s\n", id, addr);
				return;
			}
		}
		if (reachable == 0)
			die(2, "no node reachable:%s", last_errors);
		if (now_ns() >= deadline)
			die(2, "no leader found within %d ms (%d of %d nodes reachable)%s", LEADER_SEARCH_MS,
			    reachable, cfg.n_nodes, last_errors);
		sleep_ms(200);
	}
}

/* ------------------------------------------------------------------------------------------ */
/* client threads                                                                              */

typedef struct {
	unsigned index;
	unsigned long n_writes;
	uint64_t *lat; /* n_writes slots */
	unsigned long busy_retries;
	pthread_t tid;
} client_t;

static void fail_conn(conn_t *c, int rc, int io_status)
{
	/* FAILURE responses exit 1 (message printed); other errors exit io_status */
	die(rc == -2 ? 1 : io_status, "%s", c->err);
}

static void *client_main(void *arg)
{
	client_t *t = arg;
	conn_t c = { .fd = -1 };
	uint64_t db = 0, rows = 0, last = 0;
	int rc;

	if (conn_open(&c, leader_addr) != 0)
		die(2, "client %u: cannot connect to the leader: %s", t->index, c.err);
	rc = req_client(&c, ((uint64_t)getpid() << 20) | (t->index + 1));
	if (rc != 0)
		fail_conn(&c, rc, 1);
	rc = req_open(&c, cfg.db, &db);
	if (rc != 0)
		fail_conn(&c, rc, 1);
	if (t->index == 0) {
		rc = exec_sql_noparams(&c, db, create_sql, &rows);
		if (rc != 0)
			fail_conn(&c, rc, 1);
	}

	/* payload: "c<client>-s<seq>-" prefix then filler, exactly PAYLOAD_BYTES bytes */
	unsigned seed = (unsigned)now_ns() ^ (t->index * 2654435761u);
	char payload[PAYLOAD_BYTES + 1];
	for (int i = 0; i < PAYLOAD_BYTES; i++)
		payload[i] = (char)('a' + (i % 26));
	payload[PAYLOAD_BYTES] = '\0';

	/* wait until every client is connected and the table exists */
	int w = pthread_barrier_wait(&ready);
	if (w != 0 && w != PTHREAD_BARRIER_SERIAL_THREAD)
		die(1, "pthread_barrier_wait failed");

	for (unsigned long s = 0; s < t->n_writes; s++) {
		char prefix[48];
		int pl = snprintf(prefix, sizeof prefix, "c%u-s%lu-", t->index, s);
		memcpy(payload, prefix, (size_t)pl);

		/* EXEC_SQL: u64 db id, text sql, params tuple */
		buf_t *b = &c.out;
		req_begin(b);
		put_u64(b, db);
		put_text(b, insert_sql);
		/* params tuple, schema 0: count, type codes, pad to a word (count byte included) */
		put_u8(b, 3);
		put_u8(b, VAL_INT64);
		put_u8(b, VAL_INT64);
		put_u8(b, VAL_TEXT);
		put_pad(b);
		put_u64(b, (uint64_t)(int64_t)t->index); /* int64 as 8 bytes LE */
		put_u64(b, (uint64_t)(int64_t)s);
		put_text(b, payload);
		req_finish(b, REQ_EXEC_SQL);

		rd_t r;
		uint64_t t0 = now_ns();
		unsigned attempt = 0;
		for (;;) {
			rc = roundtrip(&c, RES_RESULT, "EXEC_SQL (INSERT)", &r);
			if (rc == -2 && (c.fail_code & 0xff) == SQLITE_BUSY_CODE && !cfg.no_busy_retry) {
				/* another client's write transaction holds the lock: retry after a
				 * jittered, exponentially growing pause (100 us .. 2 ms) */
				if (now_ns() - t0 > (uint64_t)IO_TIMEOUT_S * 1000000000u)
					die(1, "%s (still busy after %u retries / %d s)", c.err, attempt, IO_TIMEOUT_S);
				unsigned cap = BUSY_BACKOFF_MIN_US << (attempt < 5 ? attempt : 5);
				if (cap > BUSY_BACKOFF_MAX_US)
					cap = BUSY_BACKOFF_MAX_US;
				unsigned us = cap / 2 + (unsigned)(rand_r(&seed) % (cap / 2 + 1));
				struct timespec ts = { 0, (long)us * 1000L };
				while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
				}
				attempt++;
				t->busy_retries++;
				continue;
			}
			break;
		}
		uint64_t t1 = now_ns();
		if (rc != 0)
			fail_conn(&c, rc, 1);
		if (read_result(&c, &r, &last, &rows) != 0)
			die(1, "%s", c.err);
		if (rows != 1)
			die(1, "%s: INSERT by client %u seq %lu: rows_affected=%" PRIu64 ", expected 1", c.addr,
			    t->index, s, rows);
		t->lat[s] = t1 - t0;
	}
	conn_free(&c);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* nearest-rank percentile: the ceil(p/100 * n)-th smallest value, p in 1..100 */
static uint64_t percentile(const uint64_t *sorted, size_t n, unsigned p)
{
	size_t k = (size_t)(((unsigned long long)p * n + 99) / 100);
	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	return sorted[k - 1];
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	parse_args(argc, argv);

	snprintf(create_sql, sizeof create_sql,
	         "CREATE TABLE IF NOT EXISTS %s (id INTEGER PRIMARY KEY, client INTEGER, seq INTEGER, "
	         "payload TEXT)",
	         cfg.table);
	snprintf(insert_sql, sizeof insert_sql, "INSERT INTO %s(client, seq, payload) VALUES(?, ?, ?)",
	         cfg.table);

	find_leader();

	latencies = calloc(cfg.writes, sizeof *latencies);
	client_t *clients = calloc(cfg.clients, sizeof *clients);
	if (latencies == NULL || clients == NULL)
		die(1, "out of memory");
	if (pthread_barrier_init(&ready, NULL, cfg.clients + 1) != 0)
		die(1, "pthread_barrier_init failed");

	unsigned long base = cfg.writes / cfg.clients, extra = cfg.writes % cfg.clients, off = 0;
	for (unsigned i = 0; i < cfg.clients; i++) {
		client_t *t = &clients[i];
		t->index = i;
		t->n_writes = base + (i < extra ? 1 : 0);
		t->lat = latencies + off;
		off += t->n_writes;
		int e = pthread_create(&t->tid, NULL, client_main, t);
		if (e != 0)
			die(1, "pthread_create: %s", strerror(e));
	}

	/* write phase: from the moment every client is connected and the table exists ... */
	int w = pthread_barrier_wait(&ready);
	if (w != 0 && w != PTHREAD_BARRIER_SERIAL_THREAD)
		die(1, "pthread_barrier_wait failed");
	uint64_t start = now_ns();
	if (cfg.verbose)
		fprintf(stderr, PROG ": %u clients connected to %s, writing %lu rows\n", cfg.clients,
		        leader_addr, cfg.writes);
	/* ... until the last write's RESULT */
	for (unsigned i = 0; i < cfg.clients; i++)
		pthread_join(clients[i].tid, NULL);
	uint64_t end = now_ns();
	unsigned long retries = 0;
	for (unsigned i = 0; i < cfg.clients; i++)
		retries += clients[i].busy_retries;
	if (retries > 0 || cfg.verbose)
		fprintf(stderr, PROG ": %lu SQLITE_BUSY retries (concurrent writers)\n", retries);

	qsort(latencies, cfg.writes, sizeof *latencies, cmp_u64);
	double wall_s = (double)(end - start) / 1e9;
	double wps = wall_s > 0 ? (double)cfg.writes / wall_s : 0.0;
	double p50 = (double)percentile(latencies, cfg.writes, 50) / 1e6;
	double p99 = (double)percentile(latencies, cfg.writes, 99) / 1e6;
	printf("baseline clients=%u writes=%lu writes_per_s=%.1f p50_ms=%.3f p99_ms=%.3f\n", cfg.clients,
	       cfg.writes, wps, p50, p99);
	fflush(stdout);

	pthread_barrier_destroy(&ready);
	free(clients);
	free(latencies);
	free(cfg.nodes);
	free(cfg.nodes_buf);
	return 0;
}
