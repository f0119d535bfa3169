/*
 * millrace_http.h — a thin C layer over libmicrohttpd for the Swift server: starting a daemon
 * (MHD_start_daemon is variadic and cannot be called from Swift) and a few constants that do
 * not import.
 */
#ifndef MILLRACE_HTTP_H
#define MILLRACE_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <microhttpd.h>

/**
 * Starts a daemon on host:port (IPv4 or IPv6 literal), one thread per connection (endless
 * multipart streams block their own thread while they wait for frames; see docs/API.md),
 * with an internal polling thread that accepts connections, and inter-thread communication so
 * that it can be quiesced for a graceful shutdown.
 * Returns NULL and writes a message into err on failure.
 */
struct MHD_Daemon *mr_http_start(const char *host, uint16_t port, unsigned int connection_limit,
                                 unsigned int timeout_seconds, MHD_AccessHandlerCallback handler,
                                 void *handler_cls, MHD_RequestCompletedCallback completed,
                                 void *completed_cls, char *err, size_t errlen);

/** The port a daemon listens on (useful with port 0: any free port). */
uint16_t mr_http_port(struct MHD_Daemon *daemon);

/** MHD_CONTENT_READER_END_OF_STREAM and _END_WITH_ERROR as plain values. */
ssize_t mr_http_end_of_stream(void);
ssize_t mr_http_end_with_error(void);

#endif
