/* HTTP/1.1 heads for a proxy. Debian's llhttp 8.1.0 predates fixes for
 * CVE-2023-30589 (bare CR ends a header), CVE-2024-27982 (space before a
 * header name) and the "\r\n\rX" end-of-head bug, so every head is scanned
 * byte by byte here before llhttp sees it, and body framing (Content-Length,
 * chunked) is decoded here too: llhttp only tokenises heads. */
#include "ficus/http1.h"

#include <arpa/inet.h>
#include <llhttp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ---- raw head scanning ---------------------------------------------------- */

enum scan_state {
    SC_START_LINE = 0, /* inside the request or status line */
    SC_LINE_START,     /* first byte of a header line, or CR of the empty line */
    SC_NAME,           /* inside a header name */
    SC_VALUE,          /* after the colon */
    SC_CR,             /* saw CR ending a line; LF must follow */
    SC_END_CR,         /* saw CR of the empty line; LF must follow */
};

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (unsigned char)(c | 0x20);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* field-content: VCHAR, obs-text, SP and HTAB; no other control byte. As a
 * table (32 bytes a row), because the scan runs over every byte of every head. */
static const unsigned char field_byte[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

static bool is_field_byte(unsigned char c)
{
    return field_byte[c];
}

/* Skips d[i, lim) eight bytes at a time while none of the eight is a control
 * byte (below 0x20, HTAB included, or DEL): the start line and values are
 * mostly such runs. Returns where the byte-by-byte scan goes on; it decides
 * every byte this passes over the same way (bit twiddling hacks' "has less
 * than" and "has zero byte", exact about whether a word holds such a byte). */
static size_t skip_plain(const unsigned char *d, size_t i, size_t lim)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (lim - i >= 8) {
        uint64_t x;
        memcpy(&x, d + i, 8);
        uint64_t del = x ^ (0x7f * ones);
        if (((x - 0x20 * ones) & ~x & highs) | ((del - ones) & ~del & highs))
            break;
        i += 8;
    }
    return i;
}

int http1_scan_head(struct head_scan *s, const char *data, size_t len, size_t max)
{
    const unsigned char *d = (const unsigned char *)data;
    size_t lim = len < max ? len : max;
    size_t i = s->pos;

    /* Runs of ordinary bytes (a line's text, a name) are skipped in tight
     * loops; the state machine only sees the bytes that end them. */
    while (i < lim) {
        switch (s->state) {
        case SC_START_LINE:
            i = skip_plain(d, i, lim);
            while (i < lim && field_byte[d[i]] && d[i] != '\t')
                i++;
            if (i == lim)
                goto more;
            if (d[i] != '\r')
                return FICUS_EBADREQ; /* bare LF, NUL, tabs and controls */
            s->state = SC_CR;
            break;
        case SC_CR:
            if (d[i] != '\n')
                return FICUS_EBADREQ; /* bare CR */
            s->line++;
            s->state = SC_LINE_START;
            break;
        case SC_LINE_START:
            if (d[i] == '\r') {
                s->state = SC_END_CR;
            } else if (is_tchar(d[i])) {
                s->name_len = 1;
                s->state = SC_NAME;
            } else {
                return FICUS_EBADREQ; /* obs-fold, empty name, bare LF, bad byte */
            }
            break;
        case SC_NAME: {
            size_t from = i;
            while (i < lim && is_tchar(d[i]))
                i++;
            s->name_len += i - from;
            if (i == lim)
                goto more;
            if (d[i] != ':')
                return FICUS_EBADREQ; /* whitespace before colon, bad name byte */
            s->state = SC_VALUE;
            break;
        }
        case SC_VALUE:
            i = skip_plain(d, i, lim);
            while (i < lim && field_byte[d[i]])
                i++;
            if (i == lim)
                goto more;
            if (d[i] != '\r')
                return FICUS_EBADREQ;
            s->state = SC_CR;
            break;
        case SC_END_CR:
            if (d[i] != '\n')
                return FICUS_EBADREQ; /* "\r\n\rX" */
            s->pos = i + 1;
            return 1;
        default:
            return FICUS_EBADREQ;
        }
        i++;
    }
more:
    s->pos = i;
    /* Out of bytes: more may come, unless the limit is what stopped us. */
    return lim == max ? FICUS_EHEADTOOBIG : 0;
}

/* ---- head parsing ------------------------------------------------------------ */

struct parse_ctx {
    struct http_head *h;
    bool in_value;
    bool overflow;
};

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct parse_ctx *ctx = p->data;
    struct span *t = &ctx->h->target;
    if (t->p != NULL && t->p + t->len == at)
        t->len += n;
    else
        *t = (struct span){at, n};
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    struct parse_ctx *ctx = p->data;
    struct span *r = &ctx->h->reason;
    if (r->p != NULL && r->p + r->len == at)
        r->len += n;
    else
        *r = (struct span){at, n};
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct parse_ctx *ctx = p->data;
    struct http_head *h = ctx->h;
    if (!ctx->in_value && h->n_headers > 0) {
        struct span *nm = &h->headers[h->n_headers - 1].name;
        if (nm->p + nm->len == at) {
            nm->len += n;
            return 0;
        }
    }
    if (h->n_headers == HTTP_MAX_HEADERS) {
        ctx->overflow = true;
        return HPE_USER;
    }
    h->headers[h->n_headers].name = (struct span){at, n};
    h->headers[h->n_headers].value = (struct span){at + n, 0};
    h->n_headers++;
    ctx->in_value = false;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct parse_ctx *ctx = p->data;
    struct http_head *h = ctx->h;
    struct span *v = &h->headers[h->n_headers - 1].value;
    if (ctx->in_value && v->p + v->len == at)
        v->len += n;
    else
        *v = (struct span){at, n};
    ctx->in_value = true;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED; /* framing is ours from here */
}

static const llhttp_settings_t *parse_settings(void)
{
    static llhttp_settings_t settings;
    static bool ready; /* written once before any worker starts */
    if (!ready) {
        llhttp_settings_init(&settings);
        settings.on_url = on_url;
        settings.on_status = on_status;
        settings.on_header_field = on_header_field;
        settings.on_header_value = on_header_value;
        settings.on_headers_complete = on_headers_complete;
        ready = true;
    }
    return &settings;
}

static struct span trim(struct span s)
{
    while (s.len && (s.p[0] == ' ' || s.p[0] == '\t')) {
        s.p++;
        s.len--;
    }
    while (s.len && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t'))
        s.len--;
    return s;
}

/* Calls fn for every comma-separated, trimmed, non-empty element of v. Stops
 * and returns false when fn does. */
static bool each_token(struct span v, bool (*fn)(struct span tok, void *arg), void *arg)
{
    size_t start = 0;
    for (size_t i = 0; i <= v.len; i++) {
        if (i == v.len || v.p[i] == ',') {
            struct span tok = trim((struct span){v.p + start, i - start});
            if (tok.len && !fn(tok, arg))
                return false;
            start = i + 1;
        }
    }
    return true;
}

static bool parse_content_length(struct span v, int64_t *out)
{
    if (v.len == 0 || v.len > 18)
        return false;
    int64_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return false;
        n = n * 10 + (v.p[i] - '0');
    }
    *out = n;
    return true;
}

static bool conn_token(struct span tok, void *arg)
{
    int *flags = arg;
    if (span_ieq(tok, "close"))
        *flags |= 1;
    else if (span_ieq(tok, "keep-alive"))
        *flags |= 2;
    else if (span_ieq(tok, "upgrade"))
        *flags |= 4;
    return true;
}

/* Checks an absolute-form target against Host and sets the path from it. */
static int absolute_target(struct http_head *h)
{
    struct span t = h->target;
    size_t skip;
    if (t.len >= 7 && strncasecmp(t.p, "http://", 7) == 0)
        skip = 7;
    else if (t.len >= 8 && strncasecmp(t.p, "https://", 8) == 0)
        skip = 8;
    else
        return FICUS_EBADREQ;
    struct span auth = {t.p + skip, 0};
    while (skip + auth.len < t.len && t.p[skip + auth.len] != '/' && t.p[skip + auth.len] != '?')
        auth.len++;
    if (auth.len == 0 || memchr(auth.p, '@', auth.len) != NULL)
        return FICUS_EBADREQ;
    if (!(h->host.len == auth.len && strncasecmp(h->host.p, auth.p, auth.len) == 0))
        return FICUS_EBADREQ;
    h->path = (struct span){auth.p + auth.len, t.len - skip - auth.len};
    return 0;
}

/* The request line is exactly method SP target SP version: llhttp 8.1 lets
 * several spaces through between the parts, and a proxy that reads the line
 * one way while a backend reads it another is how requests get smuggled. Tabs
 * and other controls never get here (the scanner refuses them). Returns the
 * space after the method, or NULL when the line is not of that form. */
static const char *request_line_ok(const char *data, size_t len)
{
    const char *end = memchr(data, '\r', len);
    if (end == NULL)
        return NULL;
    /* Two spaces, neither first nor last in the line nor next to the other,
     * and no third. */
    const char *sp1 = memchr(data, ' ', (size_t)(end - data));
    if (sp1 == NULL || sp1 == data)
        return NULL;
    const char *target = sp1 + 1;
    const char *sp2 = memchr(target, ' ', (size_t)(end - target));
    if (sp2 == NULL || sp2 == target || sp2 + 1 == end)
        return NULL;
    if (memchr(sp2 + 1, ' ', (size_t)(end - sp2 - 1)) != NULL)
        return NULL;
    return sp1;
}

/* RFC 3986 unreserved and sub-delims: the bytes of a reg-name besides "%HH"
 * (ALPHA, DIGIT and -._~!$&'()*+,;=). As a bitmap, because every request's
 * Host goes through it (a strchr per byte was 10 % of a small request's head
 * parse). */
static bool is_host_byte(unsigned char c)
{
    static const uint64_t host[4] = {0x2bff7fd200000000ULL, 0x47fffffe87fffffeULL, 0, 0};
    return (host[c >> 6] >> (c & 63)) & 1;
}

/* An IP-literal without its brackets: an IPv6 address (no zone) or IPvFuture. */
static bool valid_ip_literal(struct span s)
{
    char tmp[INET6_ADDRSTRLEN];
    struct in6_addr a6;
    if (s.len >= 2 && (s.p[0] == 'v' || s.p[0] == 'V')) {
        size_t i = 1;
        while (i < s.len && hexval((unsigned char)s.p[i]) >= 0)
            i++;
        if (i == 1 || i == s.len || s.p[i] != '.' || i + 1 == s.len)
            return false;
        for (i++; i < s.len; i++) {
            if (!is_host_byte((unsigned char)s.p[i]) && s.p[i] != ':')
                return false;
        }
        return true;
    }
    if (s.len == 0 || s.len >= sizeof(tmp))
        return false;
    memcpy(tmp, s.p, s.len);
    tmp[s.len] = '\0';
    return inet_pton(AF_INET6, tmp, &a6) == 1;
}

/* RFC 9112 3.2: Host is uri-host [":" port] (RFC 3986): a reg-name (an IPv4
 * address is one too) or an IP-literal in brackets, then optionally ':' and 1
 * to 5 digits up to 65535. Nothing else: no user information, path, space or
 * control byte. An empty value is refused too, though the grammar allows it:
 * a reverse proxy has no use for a request that names no host. */
static bool valid_host(struct span h)
{
    size_t i = 0;
    if (h.len > 0 && h.p[0] == '[') {
        const char *close = memchr(h.p, ']', h.len);
        if (close == NULL || !valid_ip_literal((struct span){h.p + 1, (size_t)(close - h.p) - 1}))
            return false;
        i = (size_t)(close - h.p) + 1;
    } else {
        while (i < h.len && h.p[i] != ':') {
            unsigned char c = (unsigned char)h.p[i];
            if (c == '%') {
                if (i + 2 >= h.len || hexval((unsigned char)h.p[i + 1]) < 0 ||
                    hexval((unsigned char)h.p[i + 2]) < 0)
                    return false;
                i += 3;
            } else if (is_host_byte(c)) {
                i++;
            } else {
                return false;
            }
        }
        if (i == 0)
            return false;
    }
    if (i == h.len)
        return true;
    if (h.p[i] != ':' || h.len - i - 1 == 0 || h.len - i - 1 > 5)
        return false;
    unsigned port = 0;
    for (i++; i < h.len; i++) {
        if (h.p[i] < '0' || h.p[i] > '9')
            return false;
        port = port * 10 + (unsigned)(h.p[i] - '0');
    }
    return port <= 65535;
}

/* A header name that is not a framing header but reads as one once '_' is
 * taken for '-' (CGI, PHP, Django and some proxies fold them): forwarded, it
 * would frame the body a second way behind ficus's back. */
static bool framing_with_underscore(struct span name)
{
    static const char *const framing[] = {"content-length", "transfer-encoding"};
    if (memchr(name.p, '_', name.len) == NULL)
        return false;
    for (size_t k = 0; k < ARRAY_SIZE(framing); k++) {
        size_t n = strlen(framing[k]), i = 0;
        if (name.len != n)
            continue;
        for (; i < n; i++) {
            char c = name.p[i] == '_' ? '-' : (char)(name.p[i] | 0x20);
            if (c != framing[k][i])
                break;
        }
        if (i == n)
            return true;
    }
    return false;
}

static int check_request(struct http_head *h)
{
    if (h->target.len == 0 || memchr(h->target.p, '#', h->target.len) != NULL)
        return FICUS_EBADREQ; /* a fragment is never sent (RFC 9112 3.2) */
    if (h->target.p[0] == '*') {
        /* The asterisk form is for OPTIONS only, and is that one byte. */
        if (h->target.len != 1 || !span_eq(h->method, "OPTIONS"))
            return FICUS_EBADREQ;
        h->path = h->target;
    } else if (h->target.p[0] == '/') {
        h->path = h->target;
    } else if (absolute_target(h) != 0) {
        return FICUS_EBADREQ;
    }
    const char *q = memchr(h->path.p, '?', h->path.len);
    if (q != NULL) {
        h->query = (struct span){q + 1, (size_t)(h->path.p + h->path.len - q - 1)};
        h->path.len = (size_t)(q - h->path.p);
    }
    if (h->path.len == 0)
        h->path = SPAN_LIT("/");
    return 0;
}

int http1_parse_head(struct http_head *h, const char *data, size_t len, bool is_request)
{
    const int bad = is_request ? FICUS_EBADREQ : FICUS_EBADRESP;
    /* Every field but the header slots, by name: a reused head keeps nothing
     * of the message it held before. */
    h->method = h->target = h->path = h->query = h->host = h->reason = h->upgrade =
        (struct span){NULL, 0};
    h->status = 0;
    h->version_minor = 0;
    h->n_headers = 0;
    h->content_length = -1;
    h->chunked = false;
    h->keep_alive = false;
    h->expect_continue = false;
    h->is_head = false;
    h->head_len = len;

    struct parse_ctx ctx = {.h = h};
    llhttp_t parser;
    llhttp_init(&parser, is_request ? HTTP_REQUEST : HTTP_RESPONSE, parse_settings());
    parser.data = &ctx;
    llhttp_errno_t err = llhttp_execute(&parser, data, len);
    if (err != HPE_PAUSED)
        return bad;
    if (llhttp_get_http_major(&parser) != 1)
        return bad;
    h->version_minor = llhttp_get_http_minor(&parser);
    if (h->version_minor > 1)
        return bad;

    if (is_request) {
        const char *sp = request_line_ok(data, len);
        if (sp == NULL)
            return bad;
        h->method = (struct span){data, (size_t)(sp - data)};
        h->is_head = span_eq(h->method, "HEAD");
    } else {
        h->status = llhttp_get_status_code(&parser);
        if (h->status < 100 || h->status > 999)
            return bad;
    }

    int hosts = 0, cls = 0, tes = 0, conn_flags = 0, upgrades = 0;
    struct span upgrade = {NULL, 0};
    for (size_t i = 0; i < h->n_headers; i++) {
        struct http_header *hd = &h->headers[i];
        hd->value = trim(hd->value);
        /* Only a name of a framing header's length can read as one (the
         * memchr for '_' per header was a tenth of a small head's parse). */
        if ((hd->name.len == sizeof("content-length") - 1 ||
             hd->name.len == sizeof("transfer-encoding") - 1) &&
            framing_with_underscore(hd->name))
            return bad;
        if (span_ieq(hd->name, "content-length")) {
            if (cls++ || !parse_content_length(hd->value, &h->content_length))
                return bad;
        } else if (span_ieq(hd->name, "transfer-encoding")) {
            /* Only a lone, final "chunked" is understood; anything else
             * leaves the length in doubt. */
            if (tes++ || !span_ieq(hd->value, "chunked"))
                return bad;
            h->chunked = true;
        } else if (span_ieq(hd->name, "host")) {
            hosts++;
            h->host = hd->value;
        } else if (span_ieq(hd->name, "connection")) {
            each_token(hd->value, conn_token, &conn_flags);
        } else if (span_ieq(hd->name, "upgrade")) {
            upgrades++;
            upgrade = hd->value;
        } else if (span_ieq(hd->name, "expect")) {
            if (span_ieq(hd->value, "100-continue"))
                h->expect_continue = true;
        }
    }
    if (cls && tes)
        return bad;
    if (tes && h->version_minor == 0)
        return bad;
    h->keep_alive = h->version_minor == 1 ? !(conn_flags & 1) : (conn_flags & 2) != 0;
    /* An upgrade is asked for (or, in a 101, made) only with Connection: upgrade
     * and one non-empty Upgrade, on HTTP/1.1 (RFC 9110 7.8). */
    if ((conn_flags & 4) && upgrades == 1 && upgrade.len > 0 && h->version_minor == 1)
        h->upgrade = upgrade;

    if (is_request) {
        if (hosts > 1 || (hosts == 0 && h->version_minor == 1))
            return bad;
        if (hosts == 1 && !valid_host(h->host))
            return bad;
        if (check_request(h) != 0)
            return bad;
    }
    return 0;
}

const struct http_header *http1_find(const struct http_head *h, const char *name)
{
    for (size_t i = 0; i < h->n_headers; i++) {
        if (span_ieq(h->headers[i].name, name))
            return &h->headers[i];
    }
    return NULL;
}

bool http1_response_has_body(bool request_was_head, int status)
{
    return !(request_was_head || status / 100 == 1 || status == 204 || status == 304);
}

/* ---- chunked bodies ---------------------------------------------------------- */

enum chunk_state {
    CH_SIZE_FIRST = 0, /* first hex digit of a size line */
    CH_SIZE,           /* more hex digits */
    CH_EXT,            /* extensions after ';' up to CR */
    CH_SIZE_LF,        /* LF after the size line's CR */
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER_START, /* start of a trailer line or of the final CRLF */
    CH_TRAILER,       /* inside a trailer line */
    CH_TRAILER_LF,
    CH_FINAL_LF,
    CH_DONE,
};

#define CHUNK_LINE_MAX 4096

int64_t http1_chunked_step(struct chunked *c, const char *data, size_t len, size_t *out_off,
                           size_t *out_len, bool *done)
{
    size_t i = 0;
    *out_len = 0;
    *done = c->state == CH_DONE;
    while (i < len && c->state != CH_DONE) {
        unsigned char b = (unsigned char)data[i];
        switch (c->state) {
        case CH_SIZE_FIRST:
        case CH_SIZE: {
            int v = hexval(b);
            if (v >= 0) {
                if (c->remaining >> 56)
                    return FICUS_EBADREQ; /* would overflow 64 bits */
                c->remaining = c->remaining * 16 + (uint64_t)v;
                c->state = CH_SIZE;
            } else if (c->state == CH_SIZE && b == ';') {
                c->state = CH_EXT;
            } else if (c->state == CH_SIZE && b == '\r') {
                c->state = CH_SIZE_LF;
            } else {
                return FICUS_EBADREQ;
            }
            if (++c->line_len > CHUNK_LINE_MAX)
                return FICUS_EBADREQ;
            i++;
            break;
        }
        case CH_EXT:
            if (b == '\r')
                c->state = CH_SIZE_LF;
            else if (!is_field_byte(b))
                return FICUS_EBADREQ;
            if (++c->line_len > CHUNK_LINE_MAX)
                return FICUS_EBADREQ;
            i++;
            break;
        case CH_SIZE_LF:
            if (b != '\n')
                return FICUS_EBADREQ;
            c->line_len = 0;
            c->state = c->remaining ? CH_DATA : CH_TRAILER_START;
            i++;
            break;
        case CH_DATA: {
            size_t n = len - i;
            if ((uint64_t)n > c->remaining)
                n = (size_t)c->remaining;
            *out_off = i;
            *out_len = n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CH_DATA_CR;
            return (int64_t)(i + n);
        }
        case CH_DATA_CR:
            if (b != '\r')
                return FICUS_EBADREQ;
            c->state = CH_DATA_LF;
            i++;
            break;
        case CH_DATA_LF:
            if (b != '\n')
                return FICUS_EBADREQ;
            c->state = CH_SIZE_FIRST;
            i++;
            break;
        case CH_TRAILER_START:
            if (b == '\r') {
                c->state = CH_FINAL_LF;
            } else if (is_tchar(b)) {
                c->state = CH_TRAILER;
                c->line_len = 1;
            } else {
                return FICUS_EBADREQ;
            }
            i++;
            break;
        case CH_TRAILER:
            if (b == '\r')
                c->state = CH_TRAILER_LF;
            else if (!is_field_byte(b))
                return FICUS_EBADREQ;
            if (++c->line_len > CHUNK_LINE_MAX)
                return FICUS_EBADREQ;
            i++;
            break;
        case CH_TRAILER_LF:
            if (b != '\n')
                return FICUS_EBADREQ;
            c->state = CH_TRAILER_START;
            i++;
            break;
        case CH_FINAL_LF:
            if (b != '\n')
                return FICUS_EBADREQ;
            c->state = CH_DONE;
            i++;
            break;
        default:
            return FICUS_EBADREQ;
        }
    }
    *done = c->state == CH_DONE;
    return (int64_t)i;
}

/* ---- header rewriting --------------------------------------------------------- */

#define PUT_LIT(out, s) buf_append((out), (s), sizeof(s) - 1)

/* connection, keep-alive, proxy-connection, te, trailer, transfer-encoding,
 * upgrade and content-length, told apart by length first: every header of
 * every head goes through here (a loop over the names took a strlen each). */
static bool is_hop_by_hop(struct span name)
{
    switch (name.len) {
    case 2:
        return span_ieq(name, "te");
    case 7:
        return span_ieq(name, "trailer") || span_ieq(name, "upgrade");
    case 10:
        return span_ieq(name, "connection") || span_ieq(name, "keep-alive");
    case 14:
        return span_ieq(name, "content-length");
    case 16:
        return span_ieq(name, "proxy-connection");
    case 17:
        return span_ieq(name, "transfer-encoding");
    default:
        return false;
    }
}

struct listed {
    struct span names[16];
    size_t n;
};

static bool collect_listed(struct span tok, void *arg)
{
    struct listed *l = arg;
    if (l->n < ARRAY_SIZE(l->names))
        l->names[l->n++] = tok;
    return true;
}

static void connection_listed(const struct http_head *h, struct listed *l)
{
    l->n = 0;
    for (size_t i = 0; i < h->n_headers; i++) {
        if (span_ieq(h->headers[i].name, "connection"))
            each_token(h->headers[i].value, collect_listed, l);
    }
}

static bool in_listed(const struct listed *l, struct span name)
{
    for (size_t i = 0; i < l->n; i++) {
        if (l->names[i].len == name.len && strncasecmp(l->names[i].p, name.p, name.len) == 0)
            return true;
    }
    return false;
}

static int put_header(struct buf *out, struct span name, struct span value)
{
    int rc = buf_append(out, name.p, name.len);
    if (rc == 0)
        rc = buf_append(out, ": ", 2);
    if (rc == 0)
        rc = buf_append(out, value.p, value.len);
    if (rc == 0)
        rc = buf_append(out, "\r\n", 2);
    return rc;
}

/* "name: prior, item" (or "name: item" when there is no prior value). */
static int put_list_header(struct buf *out, struct span name, struct span prior, struct span item)
{
    int rc = buf_append(out, name.p, name.len);
    if (rc == 0)
        rc = PUT_LIT(out, ": ");
    if (rc == 0 && prior.len) {
        rc = buf_append(out, prior.p, prior.len);
        if (rc == 0)
            rc = PUT_LIT(out, ", ");
    }
    if (rc == 0)
        rc = buf_append(out, item.p, item.len);
    if (rc == 0)
        rc = PUT_LIT(out, "\r\n");
    return rc;
}

/* "host: name[:port]\r\n", an IPv6 address in brackets. */
static int put_default_host(struct buf *out, const struct forward_info *fi)
{
    bool v6 = memchr(fi->default_host.p, ':', fi->default_host.len) != NULL;
    int rc = PUT_LIT(out, "host: ");
    if (rc == 0 && v6)
        rc = PUT_LIT(out, "[");
    if (rc == 0)
        rc = buf_append(out, fi->default_host.p, fi->default_host.len);
    if (rc == 0 && v6)
        rc = PUT_LIT(out, "]");
    if (rc == 0 && fi->default_port != 0) {
        rc = PUT_LIT(out, ":");
        if (rc == 0)
            rc = buf_put_uint(out, fi->default_port);
    }
    if (rc == 0)
        rc = PUT_LIT(out, "\r\n");
    return rc;
}

int http1_write_request_head(struct buf *out, const struct http_head *req,
                             const struct forward_info *fi)
{
    struct listed listed;
    connection_listed(req, &listed);
    /* One allocation for the whole head: the added headers fit in the slack. */
    int rc = buf_reserve(out, req->head_len + fi->client_ip.len + fi->request_id.len +
                                  fi->default_host.len + 180);
    if (rc == 0)
        rc = buf_append(out, req->method.p, req->method.len);
    if (rc == 0)
        rc = buf_append(out, " ", 1);
    /* An absolute-form target goes upstream in origin form. */
    if (rc == 0 && req->target.len && req->target.p[0] != '/' && req->target.p[0] != '*') {
        rc = buf_append(out, req->path.p, req->path.len);
        if (rc == 0 && req->query.len) {
            rc = buf_append(out, "?", 1);
            if (rc == 0)
                rc = buf_append(out, req->query.p, req->query.len);
        }
    } else if (rc == 0) {
        rc = buf_append(out, req->target.p, req->target.len);
    }
    if (rc == 0)
        rc = buf_append(out, " HTTP/1.1\r\n", 11);
    /* HTTP/1.0 may leave Host out; what goes upstream is HTTP/1.1, which must
     * carry one (RFC 9112 3.2): the backend's own. */
    if (rc == 0 && req->host.p == NULL && fi->default_host.len)
        rc = put_default_host(out, fi);

    struct span xff = {NULL, 0}, via = {NULL, 0};
    for (size_t i = 0; i < req->n_headers && rc == 0; i++) {
        const struct http_header *hd = &req->headers[i];
        /* Host is end-to-end: "Connection: host" must not strip it. */
        if (is_hop_by_hop(hd->name) ||
            (in_listed(&listed, hd->name) && !span_ieq(hd->name, "host")))
            continue;
        if (span_ieq(hd->name, "x-forwarded-for")) {
            xff = hd->value; /* the last one wins; a proxy chain sends one */
            continue;
        }
        if (span_ieq(hd->name, "via")) {
            via = hd->value;
            continue;
        }
        if (span_ieq(hd->name, "expect") || span_ieq(hd->name, "x-forwarded-proto") ||
            span_ieq(hd->name, "x-forwarded-host") || span_ieq(hd->name, "x-request-id") ||
            span_ieq(hd->name, "x-ficus-shadow"))
            continue;
        if (fi->drop.len && hd->name.len == fi->drop.len &&
            strncasecmp(hd->name.p, fi->drop.p, fi->drop.len) == 0)
            continue;
        rc = put_header(out, hd->name, hd->value);
    }
    if (rc != 0)
        return rc;
    /* Fixed text is appended piece by piece: printf would scan the format and
     * measure the result twice, for every request. */
    if (fi->content_length >= 0) {
        rc = PUT_LIT(out, "content-length: ");
        if (rc == 0)
            rc = buf_put_uint(out, (uint64_t)fi->content_length);
        if (rc == 0)
            rc = PUT_LIT(out, "\r\n");
    } else if (fi->content_length == -1) {
        rc = PUT_LIT(out, "transfer-encoding: chunked\r\n");
    }
    if (rc == 0)
        rc = put_list_header(out, SPAN_LIT("x-forwarded-for"), xff, fi->client_ip);
    if (rc == 0)
        rc = fi->tls ? PUT_LIT(out, "x-forwarded-proto: https\r\n")
                     : PUT_LIT(out, "x-forwarded-proto: http\r\n");
    if (rc == 0 && req->host.len)
        rc = put_header(out, SPAN_LIT("x-forwarded-host"), req->host);
    if (rc == 0)
        rc = put_list_header(out, SPAN_LIT("via"), via, SPAN_LIT("1.1 ficus"));
    if (rc == 0 && fi->request_id.len)
        rc = put_header(out, SPAN_LIT("x-request-id"), fi->request_id);
    if (rc == 0 && fi->shadow)
        rc = PUT_LIT(out, "x-ficus-shadow: 1\r\n");
    if (rc == 0 && fi->upgrade.len) {
        rc = PUT_LIT(out, "connection: upgrade\r\n");
        if (rc == 0)
            rc = put_header(out, SPAN_LIT("upgrade"), fi->upgrade);
    }
    if (rc == 0)
        rc = buf_append(out, "\r\n", 2);
    return rc;
}

int http1_write_response_head(struct buf *out, const struct http_head *resp, int64_t content_length,
                              bool keep_alive)
{
    struct listed listed;
    connection_listed(resp, &listed);
    int rc = buf_reserve(out, resp->head_len + 64);
    if (rc != 0)
        return rc;
    if (resp->status >= 0 && resp->status <= 999) {
        char line[13] = "HTTP/1.1 000 ";
        line[9] = (char)('0' + resp->status / 100);
        line[10] = (char)('0' + resp->status / 10 % 10);
        line[11] = (char)('0' + resp->status % 10);
        rc = buf_append(out, line, sizeof(line));
        struct span reason = resp->reason;
        if (reason.len == 0) {
            const char *r = http1_reason(resp->status);
            reason = (struct span){r, strlen(r)};
        }
        if (rc == 0)
            rc = buf_append(out, reason.p, reason.len);
        if (rc == 0)
            rc = PUT_LIT(out, "\r\n");
    } else if (resp->reason.len) {
        rc = buf_printf(out, "HTTP/1.1 %03d %.*s\r\n", resp->status, (int)resp->reason.len,
                        resp->reason.p);
    } else {
        rc = buf_printf(out, "HTTP/1.1 %03d %s\r\n", resp->status, http1_reason(resp->status));
    }
    /* 1xx, 204 and 304 never carry a body, nor a length (RFC 9110 8.6 and
     * 15.4.5: a 304's Content-Length would describe another response). */
    bool no_content = resp->status / 100 == 1 || resp->status == 204 || resp->status == 304;
    if (no_content)
        content_length = -2;
    /* Other body-less answers (to HEAD): the length describes the resource. */
    bool keep_cl = content_length == -2 && !no_content;
    for (size_t i = 0; i < resp->n_headers && rc == 0; i++) {
        const struct http_header *hd = &resp->headers[i];
        if (keep_cl && span_ieq(hd->name, "content-length")) {
            rc = put_header(out, hd->name, hd->value);
            continue;
        }
        if (is_hop_by_hop(hd->name) || in_listed(&listed, hd->name))
            continue;
        rc = put_header(out, hd->name, hd->value);
    }
    if (rc != 0)
        return rc;
    if (content_length >= 0) {
        rc = PUT_LIT(out, "content-length: ");
        if (rc == 0)
            rc = buf_put_uint(out, (uint64_t)content_length);
        if (rc == 0)
            rc = PUT_LIT(out, "\r\n");
    } else if (content_length == -1) {
        rc = PUT_LIT(out, "transfer-encoding: chunked\r\n");
    }
    if (resp->status == 101 && resp->upgrade.len) {
        if (rc == 0)
            rc = PUT_LIT(out, "connection: upgrade\r\n");
        if (rc == 0)
            rc = put_header(out, SPAN_LIT("upgrade"), resp->upgrade);
    } else if (rc == 0 && !keep_alive) {
        rc = PUT_LIT(out, "connection: close\r\n");
    }
    if (rc == 0)
        rc = buf_append(out, "\r\n", 2);
    return rc;
}

const char *http1_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 417:
        return "Expectation Failed";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

int http1_write_error(struct buf *out, int status, const char *msg, bool keep_alive)
{
    char body[256];
    int n = snprintf(body, sizeof(body), "{\"error\":\"%s\"}\n", msg);
    if (n < 0 || (size_t)n >= sizeof(body))
        n = snprintf(body, sizeof(body), "{\"error\":\"error\"}\n");
    return buf_printf(out,
                      "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                      "content-length: %d\r\n%s\r\n%s",
                      status, http1_reason(status), n, keep_alive ? "" : "connection: close\r\n",
                      body);
}

void http1_body_init(struct body_framer *f, enum body_kind kind, uint64_t length)
{
    memset(f, 0, sizeof(*f));
    f->kind = kind;
    f->remaining = length;
    f->done = kind == BODY_NONE || (kind == BODY_LENGTH && length == 0);
}

int64_t http1_body_step(struct body_framer *f, const char *data, size_t len, size_t *out_off,
                        size_t *out_len)
{
    *out_off = 0;
    *out_len = 0;
    if (f->done || len == 0)
        return 0;
    switch (f->kind) {
    case BODY_LENGTH: {
        size_t n = len;
        if ((uint64_t)n > f->remaining)
            n = (size_t)f->remaining;
        *out_len = n;
        f->remaining -= n;
        f->done = f->remaining == 0;
        return (int64_t)n;
    }
    case BODY_CHUNKED: {
        bool done = false;
        int64_t n = http1_chunked_step(&f->ch, data, len, out_off, out_len, &done);
        f->done = done;
        return n;
    }
    case BODY_EOF:
        *out_len = len;
        return (int64_t)len;
    default:
        return 0;
    }
}

size_t http1_log_escape(char *out, size_t cap, struct span in)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < in.len; i++) {
        unsigned char c = (unsigned char)in.p[i];
        char esc[4];
        size_t n;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            esc[0] = '\\';
            esc[1] = 'x';
            esc[2] = hex[c >> 4];
            esc[3] = hex[c & 15];
            n = 4;
        } else {
            esc[0] = (char)c;
            n = 1;
        }
        if (o + n >= cap)
            break; /* an escape is never cut in half */
        memcpy(out + o, esc, n);
        o += n;
    }
    out[o] = '\0';
    return o;
}
