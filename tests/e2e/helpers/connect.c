/* connect ADDR PORT: open a TCP connection to ADDR:PORT (IPv4) and read what
 * the server says first. Exit 0 if connected.
 * connect @NAME unix: the same over the abstract unix socket NAME. */
#include "common.h"
#include <stddef.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: connect ADDR PORT\n");
        return 2;
    }
    int fd;
    if (argv[1][0] == '@') {
        struct sockaddr_un su = {.sun_family = AF_UNIX};
        size_t len = strlen(argv[1]);
        if (len > sizeof su.sun_path)
            return 2;
        memcpy(su.sun_path + 1, argv[1] + 1, len - 1);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (!report("socket", fd))
            return 1;
        socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
        if (!report("connect", connect(fd, (struct sockaddr *)&su, sl)))
            return 1;
        goto connected;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (!report("socket", fd))
        return 1;
    if (!report("connect", connect(fd, (struct sockaddr *)&sa, sizeof sa)))
        return 1;
connected:;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n > 0) {
        buf[n] = 0;
        printf("received: %s\n", buf);
    }
    return 0;
}
