/* The hermit example: a program whose binary is the same bytes on every
 * machine that builds it with `hermit build`. */
#include <stdio.h>

int main(int argc, char **argv) {
    const char *who = argc > 1 ? argv[1] : "world";
    printf("Hello, %s, from a hermetic build.\n", who);
    return 0;
}
