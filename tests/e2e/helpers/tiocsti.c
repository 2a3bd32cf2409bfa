/* tiocsti [FD]: push the characters "id\n" into the input queue of the
 * terminal on FD (default 0) with TIOCSTI, and also try /dev/tty.
 * Exit 0 if any character was injected. */
#include "common.h"
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int push(const char *op, int fd)
{
    const char *s = "id\n";
    for (const char *p = s; *p; p++)
        if (ioctl(fd, TIOCSTI, p) < 0)
            return report(op, -1);
    return report(op, 0);
}

int main(int argc, char **argv)
{
    int fd = argc > 1 ? atoi(argv[1]) : 0;
    int ok = push("tiocsti_fd", fd);
    int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
    if (report("open_dev_tty", tty))
        ok |= push("tiocsti_dev_tty", tty);
    return ok ? 0 : 1;
}
