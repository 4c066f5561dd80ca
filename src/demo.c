/* ficus demo: arrives with its own issue. */
#include <stdio.h>

int demo_main(int port);

int demo_main(int port)
{
    (void)port;
    fprintf(stderr, "ficus: demo is not yet available\n");
    return 1;
}
