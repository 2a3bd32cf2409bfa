/* daemon FILE: double-fork and setsid, the way a daemon leaves its parent,
 * then rewrite FILE with an increasing counter every 50 ms, forever.
 * The foreground process prints the grandchild's pid and exits 0 at once. */
#include "common.h"
#include <fcntl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: daemon FILE\n");
        return 2;
    }
    int pfd[2];
    if (pipe(pfd) < 0)
        return 1;
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child > 0) {
        pid_t grandchild = 0;
        close(pfd[1]);
        if (read(pfd[0], &grandchild, sizeof grandchild) != sizeof grandchild)
            return 1;
        waitpid(child, NULL, 0);
        printf("daemon: %d\n", (int)grandchild);
        return 0;
    }
    setsid();
    pid_t gc = fork();
    if (gc < 0)
        _exit(1);
    if (gc > 0) {
        pid_t me = gc;
        if (write(pfd[1], &me, sizeof me) != sizeof me)
            _exit(1);
        _exit(0);
    }
    close(pfd[0]);
    close(pfd[1]);
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    for (unsigned long n = 0;; n++) {
        char tmp[4096], line[64];
        snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            int len = snprintf(line, sizeof line, "%lu\n", n);
            if (write(fd, line, (size_t)len) == len)
                rename(tmp, argv[1]);
            close(fd);
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
