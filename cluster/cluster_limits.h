/* cluster/cluster_limits.h — the cluster transport's limits, with their units. */
#pragma once

#define CLUSTER_MAX_RANKS        256         /* ranks of one job (front included) */
#define CLUSTER_SPIN_US          2000        /* a waiting rank polls without sleeping this long
                                                (microseconds) after its last message: the next
                                                layer's request usually comes sooner */
#define CLUSTER_SLEEP_MAX_US     1000        /* then it sleeps between polls, doubling from 50 us
                                                up to this (microseconds): an idle worker costs
                                                little CPU, and a request waits at most this */
#define CLUSTER_REPLY_TIMEOUT_S  5           /* seconds the front waits for a rank's reply to one
                                                layer before the step fails (and the cluster with it) */
#define CLUSTER_RESIDENT_REFRESH_US 1000000  /* a worker measures its resident bytes (for status)
                                                at most this often (microseconds): reading
                                                /proc/self/smaps costs about a millisecond */
#define CLUSTER_HOST_MAX         64          /* bytes of a rank's host name kept (with the NUL) */
#define CLUSTER_MSG_ALIGN        64          /* bytes: each section of a message starts at a
                                                multiple of this */
