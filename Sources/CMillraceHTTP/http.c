#include "millrace_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

struct MHD_Daemon *mr_http_start(const char *host, uint16_t port, unsigned int connection_limit,
                                 unsigned int timeout_seconds, MHD_AccessHandlerCallback handler,
                                 void *handler_cls, MHD_RequestCompletedCallback completed,
                                 void *completed_cls, char *err, size_t errlen) {
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    struct sockaddr *addr;
    unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons(port);
        addr = (struct sockaddr *)&v4;
    } else if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons(port);
        addr = (struct sockaddr *)&v6;
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "'%s' is not an IPv4 or IPv6 address (use 127.0.0.1, 0.0.0.0 or ::1)", host);
        return NULL;
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, port, NULL, NULL, handler, handler_cls,
        MHD_OPTION_SOCK_ADDR, addr,
        MHD_OPTION_CONNECTION_LIMIT, connection_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, timeout_seconds,
        MHD_OPTION_NOTIFY_COMPLETED, completed, completed_cls,
        MHD_OPTION_END);
    if (!d) snprintf(err, errlen, "cannot listen on %s:%u (port in use, or not allowed)", host, (unsigned)port);
    return d;
}

uint16_t mr_http_port(struct MHD_Daemon *daemon) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : 0;
}

ssize_t mr_http_end_of_stream(void) { return MHD_CONTENT_READER_END_OF_STREAM; }
ssize_t mr_http_end_with_error(void) { return MHD_CONTENT_READER_END_WITH_ERROR; }
