/* stackaddr: print the address of a stack variable, a heap block and an
 * anonymous mapping; identical across runs only when ASLR is off. */
#include "common.h"
#include <sys/mman.h>

int main(void)
{
    int local = 0;
    void *heap = malloc(16);
    void *map = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("stack=%p heap=%p mmap=%p\n", (void *)&local, heap, map);
    return 0;
}
