#include "ficus/common.h"

#include <strings.h>
#include <string.h>
#include <uv.h>

const char *ficus_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case FICUS_EBADREQ:
        return "bad request";
    case FICUS_EHEADTOOBIG:
        return "head too large";
    case FICUS_EBODYTOOBIG:
        return "body too large";
    case FICUS_ETIMEOUT:
        return "timeout";
    case FICUS_EBADRESP:
        return "invalid response";
    case FICUS_ENOROUTE:
        return "no route";
    case FICUS_ECONFIG:
        return "invalid configuration";
    case FICUS_ETOOBIG:
        return "buffer full";
    case FICUS_ECLOSED:
        return "closed by peer";
    case FICUS_EFULL:
        return "limit reached";
    case FICUS_ENOMEM:
        return "out of memory";
    case FICUS_ETLS:
        return "tls error";
    case FICUS_ESTORE:
        return "state store error";
    case FICUS_ECONFLICT:
        return "changed by another writer";
    case FICUS_EUNAVAILABLE:
        return "state store unreachable";
    default:
        return uv_strerror(err);
    }
}

uint64_t xorshift64s(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

size_t utf8_len(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F; /* no UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (avail < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}
