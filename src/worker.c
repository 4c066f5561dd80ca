#include "ficus/worker.h"
#include "ficus/common.h"

#include <errno.h>
#include <unistd.h>

#define ACCESS_FLUSH_BYTES (32 * 1024)

uint64_t worker_random(struct worker *w)
{
    return xorshift64s(&w->rng); /* per worker: no lock, no sharing */
}

void worker_flush_access(struct worker *w)
{
    int fd = w->srv->access_fd;
    size_t off = 0;
    while (fd >= 0 && off < w->access_buf.len) {
        ssize_t n = write(fd, w->access_buf.data + off, w->access_buf.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* a broken log must not stop the proxy */
        off += (size_t)n;
    }
    buf_reset(&w->access_buf);
}

void worker_access_log(struct worker *w, const char *line, size_t len)
{
    buf_append(&w->access_buf, line, len);
    if (w->access_buf.len >= ACCESS_FLUSH_BYTES)
        worker_flush_access(w);
}
