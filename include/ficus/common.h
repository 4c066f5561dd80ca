/* Things every module shares: error codes and byte spans. */
#ifndef FICUS_COMMON_H
#define FICUS_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

/* Errors are negative ints: 0 is success, libuv's (negative errno) codes pass
 * through unchanged, and ficus's own codes sit below libuv's range. */
enum ficus_error {
    FICUS_EBADREQ = -20000, /* malformed or ambiguous request */
    FICUS_EHEADTOOBIG,      /* request or response head over the limit */
    FICUS_EBODYTOOBIG,      /* body over the limit */
    FICUS_ETIMEOUT,         /* a deadline passed */
    FICUS_EBADRESP,         /* malformed or ambiguous upstream response */
    FICUS_ENOROUTE,         /* no route matches */
    FICUS_ECONFIG,          /* invalid configuration */
    FICUS_ETOOBIG,          /* a capped buffer is full */
    FICUS_ECLOSED,          /* the peer closed the connection */
    FICUS_EFULL,            /* a queue or a limit is full */
    FICUS_ENOMEM,           /* allocation failed */
    FICUS_ETLS,             /* TLS handshake or record failure */
    FICUS_ESTORE,           /* the state store (etcd) answered an error */
    FICUS_ECONFLICT,        /* another writer changed the value first (compare-and-swap lost) */
    FICUS_EUNAVAILABLE,     /* the state store cannot be reached now */
};

/* Describes err, a ficus or libuv error code. The string is static. */
const char *ficus_strerror(int err);

/* A view of bytes owned by someone else. */
struct span {
    const char *p;
    size_t len;
};

#define SPAN_LIT(s) ((struct span){(s), sizeof(s) - 1})

/* Case-insensitive ASCII comparison of a span with a NUL-terminated string.
 * Inline so that the length of a literal is known at compile time and most
 * mismatches end at the length check (they run for every header). */
static inline bool span_ieq(struct span a, const char *b)
{
    size_t n = strlen(b);
    return a.len == n && strncasecmp(a.p, b, n) == 0;
}

/* Exact comparison of a span with a NUL-terminated string. */
static inline bool span_eq(struct span a, const char *b)
{
    size_t n = strlen(b);
    return a.len == n && memcmp(a.p, b, n) == 0;
}

/* xorshift64*: advances *state (never 0) and returns the next number. Fast,
 * not for secrets: sampling, random buckets, request ids, demo traffic. */
uint64_t xorshift64s(uint64_t *state);

/* Length of the well-formed UTF-8 sequence at p (avail >= 1 bytes): 1 for
 * ASCII, 0 when the bytes are not UTF-8 by jansson's rules (no overlong forms,
 * no UTF-16 surrogates, nothing above U+10FFFF). */
size_t utf8_len(const unsigned char *p, size_t avail);

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Is c an RFC 9110 token character (ALPHA, DIGIT and !#$%&'*+-.^_`|~), what
 * methods and header names are made of? A bitmap: it runs for every byte of
 * every header name. */
static inline bool is_tchar(unsigned char c)
{
    static const uint64_t tchar[4] = {0x03ff6cfa00000000ULL, 0x57ffffffc7fffffeULL, 0, 0};
    return (tchar[c >> 6] >> (c & 63)) & 1;
}

/* The struct that holds member at ptr (the kernel's container_of). */
#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* An intrusive, circular, doubly-linked list (libuv's queue, the kernel's
 * list_head): each member embeds a node, and the head is a node of its own, so
 * insertion and removal need no allocation and no search. */
struct list {
    struct list *prev, *next;
};

static inline void list_init(struct list *head)
{
    head->prev = head->next = head;
}

static inline bool list_empty(const struct list *head)
{
    return head->next == head;
}

/* Inserts node at the front of the list at head. */
static inline void list_push(struct list *head, struct list *node)
{
    node->next = head->next;
    node->prev = head;
    head->next->prev = node;
    head->next = node;
}

/* Unlinks node from its list (it must be in one) and leaves it self-linked. */
static inline void list_remove(struct list *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = node;
}

/* FNV-1a over n bytes at p, from seed (FNV_SEED for a fresh hash): fast, not
 * for secrets; hash tables of paths, keys and member names. */
#define FNV_SEED 0xcbf29ce484222325ULL
static inline uint64_t hash_fnv1a(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *b = p;
    uint64_t h = seed;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#endif
