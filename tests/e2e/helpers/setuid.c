/* setuid PATH: create PATH and try to give it the setuid and setgid bits
 * with chmod, fchmod and fchmodat. Exit 0 if any bit stuck. */
#include "common.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: setuid PATH\n");
        return 2;
    }
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (!report("create", fd))
        return 1;
    report("chmod_4755", chmod(argv[1], 04755));
    report("fchmod_2755", fchmod(fd, 02755));
    report("fchmodat_6755", fchmodat(AT_FDCWD, argv[1], 06755, 0));
    struct stat st;
    if (!report("stat", stat(argv[1], &st)))
        return 1;
    printf("mode: %o\n", (unsigned)(st.st_mode & 07777));
    return (st.st_mode & (S_ISUID | S_ISGID)) ? 0 : 1;
}
