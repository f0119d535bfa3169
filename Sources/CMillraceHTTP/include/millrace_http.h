/*
 * millrace_http.h — a thin C layer over libmicrohttpd for the Swift server: starting a daemon
 * (MHD_start_daemon is variadic and cannot be called from Swift), a few constants that do not
 * import, and the socket checks the server's reaper makes on connections MHD is not watching.
 */
#ifndef MILLRACE_HTTP_H
#define MILLRACE_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <microhttpd.h>

/** What mr_http_start configures (docs/SECURITY.md explains each limit). */
struct mr_http_config {
    const char *host;                 /* IPv4 or IPv6 literal */
    uint16_t port;                    /* 0: any free port */
    unsigned int poll_threads;        /* MHD's thread pool: each thread runs its own epoll loop */
    unsigned int connection_limit;    /* most open connections in all */
    unsigned int per_ip_limit;        /* most open connections from one address (0: no limit) */
    unsigned int idle_timeout;        /* seconds without traffic before MHD closes a connection */
    size_t connection_memory;         /* MHD's per-connection buffer: bounds header size */
};

/**
 * Starts a daemon: an epoll event loop on a pool of `poll_threads` threads (not one thread per
 * connection, so idle or slow clients cost a socket and a buffer, not a thread), with
 * suspend/resume so that handlers run on the server's own workers while MHD waits, and
 * inter-thread communication so that it can be quiesced for a graceful shutdown.
 * `notify` is told when each connection opens and closes.
 * Returns NULL and writes a message into err on failure.
 */
struct MHD_Daemon *mr_http_start(const struct mr_http_config *config, MHD_AccessHandlerCallback handler,
                                 void *handler_cls, MHD_RequestCompletedCallback completed,
                                 void *completed_cls, MHD_NotifyConnectionCallback notify,
                                 void *notify_cls, char *err, size_t errlen);

/** The port a daemon listens on (useful with port 0: any free port). */
uint16_t mr_http_port(struct MHD_Daemon *daemon);

/** The socket of a connection (-1 if unknown). */
int mr_http_connection_fd(struct MHD_Connection *connection);

/**
 * Whether the peer of a connected socket has gone: an orderly close (a read would return 0) or
 * an error such as a reset. Looks without consuming anything (MSG_PEEK) and never blocks, so it
 * can be asked of a connection MHD has suspended, which MHD itself does not watch.
 */
int mr_http_peer_gone(int fd);

/** Ends a connection's traffic both ways so that MHD's event loop sees it close and cleans it up. */
void mr_http_shutdown_socket(int fd);

/**
 * Limits glibc's malloc to `arenas` arenas (mallopt M_ARENA_MAX; no effect elsewhere). A server
 * with many threads otherwise gets an arena per thread, each keeping the memory freed in it.
 */
void mr_limit_malloc_arenas(int arenas);

/** MHD_CONTENT_READER_END_OF_STREAM and _END_WITH_ERROR as plain values. */
ssize_t mr_http_end_of_stream(void);
ssize_t mr_http_end_with_error(void);

#endif
