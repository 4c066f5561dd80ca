/* HTTP/1.1 message heads: strict raw-byte checks, llhttp parsing of the head,
 * a strict chunked decoder, the header rules of a proxy (hop-by-hop removal,
 * forwarding headers) and head serialisation. Pure: no libuv, no I/O. */
#ifndef FICUS_HTTP1_H
#define FICUS_HTTP1_H

#include "ficus/buf.h"
#include "ficus/common.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 128

struct http_header {
    struct span name;
    struct span value; /* without surrounding whitespace */
};

/* A parsed request or response head. Spans point into the buffer that held the
 * raw head; it must outlive the head. */
struct http_head {
    struct span method;  /* requests */
    struct span target;  /* requests: as sent (origin or absolute form) */
    struct span path;    /* requests: target without query; for absolute form, the path part */
    struct span query;   /* requests: after '?', without it; empty when none */
    struct span host;    /* requests: the Host header value */
    struct span upgrade; /* the Upgrade header's value when Connection lists "upgrade" and the
                            message is HTTP/1.1 (one Upgrade header); empty otherwise */
    int status;          /* responses */
    struct span reason;  /* responses */
    int version_minor;   /* HTTP/1.x */
    struct http_header headers[HTTP_MAX_HEADERS];
    size_t n_headers;
    size_t head_len; /* bytes of the raw head, final CRLF CRLF included */

    /* Framing, derived and checked by http1_parse_head. */
    int64_t content_length; /* -1: none */
    bool chunked;
    bool keep_alive;      /* after Connection and version */
    bool expect_continue; /* Expect: 100-continue */
    bool is_head;         /* requests: method HEAD */
};

/* Scans a head incrementally for its end and for bytes no strict parser
 * accepts (bare CR, bare LF, NUL, obs-fold, whitespace before a colon, a name
 * byte that is no token character, control bytes in values). */
struct head_scan {
    size_t pos;      /* bytes examined */
    unsigned state;  /* private */
    unsigned line;   /* lines seen; 0 is the start line */
    size_t name_len; /* private */
};

/* Examines data[scan->pos, len). Returns 1 when the head ends (scan->pos is then
 * the head's length), 0 when more bytes are needed, FICUS_EBADREQ for a byte
 * that makes the head invalid, FICUS_EHEADTOOBIG when the head would exceed max. */
int http1_scan_head(struct head_scan *scan, const char *data, size_t len, size_t max);

/* Parses a complete, scanned head of len bytes with llhttp (all lenient flags
 * off) and checks framing: Content-Length digits only and single-valued,
 * Transfer-Encoding only a final "chunked" (and only on HTTP/1.1), never both,
 * no header that reads as one of those two with '_' for '-'. Requests: the
 * request line is method SP target SP version exactly; the target has no
 * fragment, is "*" only for OPTIONS; HTTP/1.1 needs exactly one Host (1.0 at
 * most one), a valid RFC 3986 host with an optional port; an absolute-form
 * target must agree with it.
 * is_request selects the message type (whether a response has a body depends
 * on the request too: see http1_response_has_body). Returns 0 or
 * FICUS_EBADREQ / FICUS_EBADRESP; every field of h is set either way. */
int http1_parse_head(struct http_head *h, const char *data, size_t len, bool is_request);

/* Returns the first header named name (any case), or NULL. */
const struct http_header *http1_find(const struct http_head *h, const char *name);

/* Does a response to this request with this status carry a body? */
bool http1_response_has_body(bool request_was_head, int status);

/* Strict chunked-body decoder (RFC 9112 7.1): hex size without sign, space or
 * overflow, optional extensions, CRLF after size and after data, trailers
 * skipped. */
struct chunked {
    unsigned state;
    uint64_t remaining; /* data bytes left in the current chunk */
    size_t line_len;    /* bytes of the current size or trailer line */
};

/* Consumes bytes from data[0, len). Returns FICUS_EBADREQ for invalid framing
 * (the caller maps it to its side), else the number of bytes consumed; when
 * *out_len is set non-zero, data[*out_off, *out_off + *out_len) is body data
 * and the caller calls again with the rest. *done is set once the final chunk
 * and trailers are read. */
int64_t http1_chunked_step(struct chunked *c, const char *data, size_t len, size_t *out_off,
                           size_t *out_len, bool *done);

/* What the proxy knows when it rewrites a head for the other side. */
struct forward_info {
    struct span client_ip;  /* for X-Forwarded-For */
    bool tls;               /* X-Forwarded-Proto https */
    struct span request_id; /* x-request-id to send */
    bool shadow;            /* adds x-ficus-shadow: 1 */
    struct span drop;       /* one more header not to forward (override header), may be empty */
    int64_t content_length; /* -1: chunked; -2: no body */
    struct span upgrade;    /* non-empty: the request asks for this upgrade, carried to the
                               backend as "connection: upgrade" and "upgrade: <this>" */
    /* The backend's host (a name or an IP address, IPv6 without brackets) and
     * port (0: the scheme's default, left out), sent as Host when the request
     * has none (HTTP/1.0). May be empty: then nothing is added. */
    struct span default_host;
    uint16_t default_port;
};

/* Appends the forwarded request head to out: request line (HTTP/1.1), Host
 * from fi->default_host when the request has none, headers minus hop-by-hop
 * ones (those Connection names included), minus framing and Expect, plus
 * ficus's framing, X-Forwarded-For/-Proto/-Host, Via and x-request-id.
 * Returns 0 or a buf error. */
int http1_write_request_head(struct buf *out, const struct http_head *req,
                             const struct forward_info *fi);

/* Appends the response head for the client: status line, headers minus
 * hop-by-hop and framing ones, plus content_length (>= 0) or chunked (-1) or
 * nothing (-2, a body-less response: the backend's Content-Length is kept, as
 * it describes the resource of a HEAD), and "connection: close" when
 * !keep_alive. A 1xx, 204 or 304 never gets a Content-Length or a
 * Transfer-Encoding, whatever content_length says: it has no body. */
int http1_write_response_head(struct buf *out, const struct http_head *resp, int64_t content_length,
                              bool keep_alive);

/* Appends a small complete response with a JSON body {"error": msg}. */
int http1_write_error(struct buf *out, int status, const char *msg, bool keep_alive);

/* Writes the bytes of in into out (cap >= 1 bytes, NUL-terminated) for a
 * quoted access-log field: '"' and '\\' get a backslash; control bytes, DEL
 * and every byte >= 0x80 become \xHH. Stops before the first escape that does
 * not fit (none is cut in half). Returns the bytes written, NUL excluded. */
size_t http1_log_escape(char *out, size_t cap, struct span in);

/* "Bad Request" for 400 and so on; "Unknown" otherwise. */
const char *http1_reason(int status);

/* How a message body is delimited. */
enum body_kind { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_EOF };

struct body_framer {
    enum body_kind kind;
    uint64_t remaining; /* BODY_LENGTH: bytes left */
    struct chunked ch;
    bool done;
};

/* Sets up f for a body of kind (length for BODY_LENGTH); BODY_NONE and a zero
 * length are done at once. */
void http1_body_init(struct body_framer *f, enum body_kind kind, uint64_t length);

/* Consumes body bytes from data[0, len): returns the number consumed (the rest
 * belongs to the next message) or FICUS_EBADREQ for bad chunked framing. When
 * *out_len is non-zero, data[*out_off, *out_off + *out_len) is body data.
 * f->done is set at the end of the body (never for BODY_EOF: the caller ends
 * it on EOF). */
int64_t http1_body_step(struct body_framer *f, const char *data, size_t len, size_t *out_off,
                        size_t *out_len);

#endif
