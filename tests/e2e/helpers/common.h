/* Shared by the escape-attempt helpers: every helper prints one line per
 * attempted operation, "<op>: ok" or "<op>: <ERRNO NAME>", so the Rust test
 * can assert that an attempt failed *for the right reason*. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline int report(const char *op, int rc)
{
    if (rc < 0) {
        const char *name = strerrorname_np(errno);
        printf("%s: %s\n", op, name ? name : "E?");
        fflush(stdout);
        return 0;
    }
    printf("%s: ok\n", op);
    fflush(stdout);
    return 1;
}
