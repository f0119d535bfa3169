#include "millrace_http.h"

#include <arpa/inet.h>
#include <errno.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

struct MHD_Daemon *mr_http_start(const struct mr_http_config *c, MHD_AccessHandlerCallback handler,
                                 void *handler_cls, MHD_RequestCompletedCallback completed,
                                 void *completed_cls, MHD_NotifyConnectionCallback notify,
                                 void *notify_cls, char *err, size_t errlen) {
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    struct sockaddr *addr;
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    if (inet_pton(AF_INET, c->host, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons(c->port);
        addr = (struct sockaddr *)&v4;
    } else if (inet_pton(AF_INET6, c->host, &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons(c->port);
        addr = (struct sockaddr *)&v6;
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "'%s' is not an IPv4 or IPv6 address (use 127.0.0.1, 0.0.0.0 or ::1)", c->host);
        return NULL;
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, c->port, NULL, NULL, handler, handler_cls,
        MHD_OPTION_SOCK_ADDR, addr,
        MHD_OPTION_THREAD_POOL_SIZE, c->poll_threads < 1 ? 1u : c->poll_threads,
        MHD_OPTION_CONNECTION_LIMIT, c->connection_limit,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, c->per_ip_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, c->idle_timeout,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, c->connection_memory,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_NOTIFY_COMPLETED, completed, completed_cls,
        MHD_OPTION_NOTIFY_CONNECTION, notify, notify_cls,
        MHD_OPTION_END);
    if (!d) snprintf(err, errlen, "cannot listen on %s:%u (port in use, or not allowed)", c->host, (unsigned)c->port);
    return d;
}

uint16_t mr_http_port(struct MHD_Daemon *daemon) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : 0;
}

int mr_http_connection_fd(struct MHD_Connection *connection) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info ? info->connect_fd : -1;
}

int mr_http_peer_gone(int fd) {
    if (fd < 0) return 1;
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return 0;                       /* data waiting (a pipelined request): still there */
    if (n == 0) return 1;                      /* orderly close */
    return !(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
}

void mr_http_shutdown_socket(int fd) {
    if (fd >= 0) shutdown(fd, SHUT_RDWR);
}

void mr_limit_malloc_arenas(int arenas) {
#if defined(__GLIBC__)
    mallopt(M_ARENA_MAX, arenas);
#else
    (void)arenas;
#endif
}

ssize_t mr_http_end_of_stream(void) { return MHD_CONTENT_READER_END_OF_STREAM; }
ssize_t mr_http_end_with_error(void) { return MHD_CONTENT_READER_END_WITH_ERROR; }
