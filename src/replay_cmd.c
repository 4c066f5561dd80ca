#include "ficus/replay.h"
int replay_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 2;
}
