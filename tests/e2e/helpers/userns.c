/* userns: unshare(CLONE_NEWUSER|CLONE_NEWNS), map ourselves to root, and use
 * the new "capabilities": mount a tmpfs, remount / read-write, write into /bin.
 * Each step is reported; exit 0 only if a write to the root succeeded. */
#include "common.h"
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_file(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, s, strlen(s));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(s) ? 0 : -1;
}

int main(void)
{
    char map[64];
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (!report("unshare_user", unshare(CLONE_NEWUSER)))
        return 1;
    report("unshare_mnt", unshare(CLONE_NEWNS));
    snprintf(map, sizeof map, "0 %u 1\n", (unsigned)uid);
    report("uid_map", write_file("/proc/self/uid_map", map));
    report("setgroups", write_file("/proc/self/setgroups", "deny\n"));
    snprintf(map, sizeof map, "0 %u 1\n", (unsigned)gid);
    report("gid_map", write_file("/proc/self/gid_map", map));
    mkdir("/tmp/userns-x", 0755);
    report("mount_tmpfs", mount("none", "/tmp/userns-x", "tmpfs", 0, NULL));
    report("remount_root_rw", mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL));
    int fd = open("/bin/escaped", O_WRONLY | O_CREAT, 0644);
    if (report("write_root", fd))
        return 0;
    return 1;
}
