/* readfd N: read from file descriptor N (one inherited from whoever started
 * us) and print the first line. Exit 0 if anything was read. */
#include "common.h"
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: readfd N\n");
        return 2;
    }
    char buf[256];
    ssize_t n = read(atoi(argv[1]), buf, sizeof buf - 1);
    if (!report("read", (int)n))
        return 1;
    buf[n] = 0;
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = 0;
    printf("data: %s\n", buf);
    return n > 0 ? 0 : 1;
}
