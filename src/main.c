/* The command line: run, check, demo, --version, --help. */
#include "ficus/config.h"
#include "ficus/demo.h"
#include "ficus/log.h"
#include "ficus/replay.h"
#include "ficus/server.h"
#include "ficus/state.h"
#include "ficus/tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: ficus [run] [-c FILE]      run the proxy (default FILE: ./ficus.json)\n"
    "       ficus check [-c FILE]      validate FILE; print \"ok\" or one line per error\n"
    "       ficus demo [--port N]      run the self-contained demo\n"
    "       ficus replay [OPTIONS] [LOG...]  send recorded divergent requests again and compare\n"
    "                                  (ficus replay --help)\n"
    "       ficus --version | --help\n"
    "options:\n"
    "  -c, --config FILE     configuration file\n"
    "  -l, --log-level LVL   debug, info, warn, error (default info; or FICUS_LOG_LEVEL)\n";

static int cmd_check(const char *path)
{
    struct config_errors errs = {0};
    struct config *cfg = config_load(path, &errs);
    if (cfg != NULL && tls_config_load(cfg, &errs) != 0) {
        config_unref(cfg);
        cfg = NULL;
    }
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++)
            printf("%s\n", errs.lines[i]);
        config_errors_dispose(&errs);
        return 1;
    }
    char *overrides = NULL;
    if (cfg->state_file != NULL && state_describe(cfg->state_file, &errs, &overrides) != 0) {
        for (size_t i = 0; i < errs.n; i++)
            printf("%s\n", errs.lines[i]);
        config_errors_dispose(&errs);
        config_unref(cfg);
        return 1;
    }
    config_errors_dispose(&errs);
    printf("ok\n");
    if (overrides != NULL)
        fputs(overrides, stdout);
    free(overrides);
    config_unref(cfg);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = "run";
    const char *path = "ficus.json";
    int port = 0;
    int i = 1;
    const char *env_level = getenv("FICUS_LOG_LEVEL");
    if (env_level != NULL && log_set_level(env_level) != 0) {
        fprintf(stderr, "ficus: FICUS_LOG_LEVEL: unknown level \"%s\"\n", env_level);
        return 2;
    }
    if (i < argc && argv[i][0] != '-') {
        cmd = argv[i++];
        if (strcmp(cmd, "run") != 0 && strcmp(cmd, "check") != 0 && strcmp(cmd, "demo") != 0 &&
            strcmp(cmd, "replay") != 0) {
            fprintf(stderr, "ficus: unknown command \"%s\"\n%s", cmd, usage);
            return 2;
        }
        /* replay has options of its own: it reads every argument itself. */
        if (strcmp(cmd, "replay") == 0)
            return replay_main(argc - i, argv + i);
    }
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--version") == 0) {
            printf("ficus %s\n", FICUS_VERSION);
            return 0;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) && i + 1 < argc) {
            path = argv[++i];
        } else if ((strcmp(a, "-l") == 0 || strcmp(a, "--log-level") == 0) && i + 1 < argc) {
            if (log_set_level(argv[++i]) != 0) {
                fprintf(stderr, "ficus: unknown log level \"%s\"\n", argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--port") == 0 && i + 1 < argc && strcmp(cmd, "demo") == 0) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 1 || v > 65535) {
                fprintf(stderr, "ficus: --port: must be a number from 1 to 65535\n");
                return 2;
            }
            port = (int)v;
        } else {
            fprintf(stderr, "ficus: unexpected argument \"%s\"\n%s", a, usage);
            return 2;
        }
    }
    if (strcmp(cmd, "check") == 0)
        return cmd_check(path);
    if (strcmp(cmd, "demo") == 0)
        return demo_main(port);
    return server_run(path);
}
