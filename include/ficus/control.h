/* The control thread's once-a-second work: sample the counters, then for each
 * route run the guard (roll back when divergence or errors of new pass their
 * limits) and the ramp (raise new_percent step by step while the guard holds). */
#ifndef FICUS_CONTROL_H
#define FICUS_CONTROL_H

struct server;

/* One tick; control thread only. */
void control_tick(struct server *srv);

#endif
