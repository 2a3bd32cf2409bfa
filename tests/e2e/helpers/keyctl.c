/* keyctl: try to join a fresh session keyring and to add a key to it.
 * The kernel keyring is not namespaced; a sandbox must refuse both.
 * Exit 0 if either worked. */
#include "common.h"
#include <sys/syscall.h>
#include <unistd.h>

#define KEYCTL_JOIN_SESSION_KEYRING 1
#define KEY_SPEC_SESSION_KEYRING (-3)

int main(void)
{
    int ok = 0;
    ok |= report("join_session_keyring",
                 (int)syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, "hermit-escape"));
    ok |= report("add_key", (int)syscall(SYS_add_key, "user", "hermit-escape", "x", 1,
                                         KEY_SPEC_SESSION_KEYRING));
    return ok ? 0 : 1;
}
