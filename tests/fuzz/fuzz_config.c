/* libFuzzer target: the configuration loader (config_parse, everything after
 * reading the file).
 *
 * Input: the text of a configuration file. Checked beyond "no crash, no leak,
 * no undefined behaviour": a snapshot comes back exactly when no error line
 * does; every error line is one line that names the file first
 * ("fuzz.json: location: reason"); a snapshot's routes point at backends it
 * has, and it survives an extra reference. */
#include "fuzz.h"

#include "ficus/config.h"

#include <string.h>

#define FNAME "fuzz.json"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config_errors errs = {0};
    struct config *cfg = config_parse((const char *)data, size, FNAME, &errs);
    FUZZ_CHECK((cfg == NULL) == (errs.n > 0));
    for (size_t i = 0; i < errs.n; i++) {
        const char *line = errs.lines[i];
        if (strncmp(line, FNAME ": ", strlen(FNAME ": ")) != 0 || strchr(line, '\n') != NULL) {
            fprintf(stderr, "not one error line naming the file: [%s]\n", line);
            abort();
        }
    }
    if (cfg != NULL) {
        FUZZ_CHECK(cfg->n_backends >= 1 && cfg->n_routes >= 1);
        for (size_t i = 0; i < cfg->n_routes; i++) {
            const struct route_cfg *rt = &cfg->routes[i];
            FUZZ_CHECK(rt->legacy >= 0 && (size_t)rt->legacy < cfg->n_backends);
            FUZZ_CHECK(rt->new_ >= 0 && (size_t)rt->new_ < cfg->n_backends);
            FUZZ_CHECK(config_route_index(cfg, rt->name) >= 0);
        }
        FUZZ_CHECK(config_ref(cfg) == cfg);
        config_unref(cfg);
        config_unref(cfg);
    }
    config_errors_dispose(&errs);
    return 0;
}
