/* Structured logging: one line per event, key=value fields, to standard error.
 * Arguments are not evaluated below the active level. Never pass a header value
 * listed in redact_headers. Thread-safe: each line is one write(2). */
#ifndef FICUS_LOG_H
#define FICUS_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF };

extern int log_min_level;

/* Sets the level from a name ("debug", "info", "warn", "error", "off").
 * Returns 0, or -1 for an unknown name (the level is then unchanged). */
int log_set_level(const char *name);

/* Writes one line: "TIME level=LEVEL mod=MOD MESSAGE". */
void log_write(enum log_level level, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_at(lvl, mod, ...)                                                                      \
    do {                                                                                           \
        if ((lvl) >= log_min_level)                                                                \
            log_write((lvl), (mod), __VA_ARGS__);                                                  \
    } while (0)
#define log_debug(mod, ...) log_at(LOG_DEBUG, mod, __VA_ARGS__)
#define log_info(mod, ...)  log_at(LOG_INFO, mod, __VA_ARGS__)
#define log_warn(mod, ...)  log_at(LOG_WARN, mod, __VA_ARGS__)
#define log_error(mod, ...) log_at(LOG_ERROR, mod, __VA_ARGS__)

#endif
