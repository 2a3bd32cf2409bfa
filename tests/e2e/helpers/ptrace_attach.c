/* ptrace_attach PID: try PTRACE_ATTACH (then PTRACE_SEIZE) on PID.
 * Exit 0 if either attached (an escape inside the sandbox), 1 otherwise. */
#include "common.h"
#include <sys/ptrace.h>
#include <sys/types.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: ptrace_attach PID\n");
        return 2;
    }
    pid_t pid = (pid_t)atoi(argv[1]);
    if (report("attach", (int)ptrace(PTRACE_ATTACH, pid, 0, 0))) {
        ptrace(PTRACE_DETACH, pid, 0, 0);
        return 0;
    }
    if (report("seize", (int)ptrace(PTRACE_SEIZE, pid, 0, 0))) {
        ptrace(PTRACE_DETACH, pid, 0, 0);
        return 0;
    }
    return 1;
}
