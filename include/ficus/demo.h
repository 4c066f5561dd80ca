/* `ficus demo`: the proxy, a built-in legacy and new backend (the new one with a
 * few deliberate differences), a small traffic generator and the dashboard, in
 * one process. */
#ifndef FICUS_DEMO_H
#define FICUS_DEMO_H

/* Runs the demo with the proxy on port (0: the default, 8080) until SIGINT or
 * SIGTERM. Returns the process exit code. */
int demo_main(int port);

#endif
