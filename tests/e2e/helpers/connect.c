/* connect ADDR PORT: open a TCP connection to ADDR:PORT (IPv4) and read what
 * the server says first. Exit 0 if connected. */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: connect ADDR PORT\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (!report("socket", fd))
        return 1;
    if (!report("connect", connect(fd, (struct sockaddr *)&sa, sizeof sa)))
        return 1;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n > 0) {
        buf[n] = 0;
        printf("received: %s\n", buf);
    }
    return 0;
}
