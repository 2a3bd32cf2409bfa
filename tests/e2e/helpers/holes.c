/* holes OP...: the attempts of tests/e2e/sandbox_holes.rs, one line each
 * ("<op>: ok" or "<op>: <ERRNO NAME>", see common.h).
 *   tty FD          fchmod(FD, 0666), switch echo off, TIOCEXCL on FD
 *   ttystate FD     prints "state: MODE ECHO EXCL" of the terminal on FD
 *   mknod PATH      mknodat(S_IFREG | 06755), then the mode it got
 *   socket F T P    socket(F, T, P) with numbers */
#include "common.h"
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

static int tty(int fd)
{
    int ok = report("fchmod", fchmod(fd, 0666));
    struct termios t;
    int rc = tcgetattr(fd, &t);
    if (rc == 0) {
        t.c_lflag &= ~(ECHO | ICANON);
        rc = tcsetattr(fd, TCSANOW, &t);
    }
    ok |= report("echo_off", rc);
    ok |= report("tiocexcl", ioctl(fd, TIOCEXCL));
    return ok;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "tty") == 0)
        return tty(atoi(argv[2])) ? 0 : 1;
    if (argc == 3 && strcmp(argv[1], "ttystate") == 0) {
        int fd = atoi(argv[2]), excl = -1;
        struct stat st;
        struct termios t;
        if (fstat(fd, &st) < 0 || tcgetattr(fd, &t) < 0 || ioctl(fd, TIOCGEXCL, &excl) < 0)
            return report("ttystate", -1), 1;
        printf("state: %o %d %d\n", (unsigned)(st.st_mode & 07777), !!(t.c_lflag & ECHO), excl);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "mknod") == 0) {
        int ok = report("mknod", mknodat(AT_FDCWD, argv[2], S_IFREG | 06755, 0));
        struct stat st;
        if (ok && stat(argv[2], &st) == 0)
            printf("mode: %o\n", (unsigned)(st.st_mode & 07777));
        return ok ? 0 : 1;
    }
    if (argc == 5 && strcmp(argv[1], "socket") == 0) {
        int fd = socket(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
        report("socket", fd);
        return fd >= 0 ? 0 : 1;
    }
    fprintf(stderr, "usage: holes tty FD | mknod PATH | socket F T P\n");
    return 2;
}
