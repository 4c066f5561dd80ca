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
