/* Calls each system call RUN must not make, with arguments the kernel refuses (a bad pointer
   or number), so that an allowed call fails with EFAULT/EINVAL/... and harms nothing, and a
   filtered one fails with EPERM. Prints "name ERRNO" or "name OK". Built by
   tests/worker/test_confine.py with gcc -static. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sched.h>
#include <unistd.h>
#include <sys/syscall.h>

static void report(const char *name, long result) {
    printf("%s %s\n", name, result == -1 ? strerrorname_np(errno) : "OK");
}

static long int80(long nr, long a, long b, long c) {
    long result;
    __asm__ volatile("int $0x80" : "=a"(result) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return result;
}

int main(void) {
    void *bad = (void *)1;  /* a pointer the kernel refuses: EFAULT where a call is allowed */
    report("mount", syscall(SYS_mount, bad, bad, bad, 0, bad));
    report("umount2", syscall(SYS_umount2, bad, 0));
    report("pivot_root", syscall(SYS_pivot_root, bad, bad));
    report("unshare", syscall(SYS_unshare, CLONE_NEWUSER));
    report("setns", syscall(SYS_setns, -1, 0));
    report("keyctl", syscall(SYS_keyctl, 0, bad, 0, 0, 0));
    report("add_key", syscall(SYS_add_key, bad, bad, bad, 0, 0));
    report("request_key", syscall(SYS_request_key, bad, bad, bad, 0));
    report("bpf", syscall(SYS_bpf, 9999, bad, 0));
    report("perf_event_open", syscall(SYS_perf_event_open, bad, 0, -1, -1, 0));
    report("kexec_load", syscall(SYS_kexec_load, 0, 9999, bad, 0));
    report("init_module", syscall(SYS_init_module, bad, 0, bad));
    report("finit_module", syscall(SYS_finit_module, -1, bad, 0));
    report("delete_module", syscall(SYS_delete_module, bad, 0));
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, bad, 0));
    report("name_to_handle_at", syscall(SYS_name_to_handle_at, -1, bad, bad, bad, 0));
    report("reboot", syscall(SYS_reboot, 0, 0, 0, bad));
    report("swapon", syscall(SYS_swapon, bad, 0));
    report("swapoff", syscall(SYS_swapoff, bad));
    report("acct", syscall(SYS_acct, bad));
    report("settimeofday", syscall(SYS_settimeofday, bad, bad));
    report("clock_settime", syscall(SYS_clock_settime, 0, bad));
    report("iopl", syscall(SYS_iopl, 99));
    report("ioperm", syscall(SYS_ioperm, 0, 0, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, -1));
    report("lookup_dcookie", syscall(SYS_lookup_dcookie, 0, bad, 0));
    report("quotactl", syscall(SYS_quotactl, 0, bad, 0, bad));
    report("syslog", syscall(SYS_syslog, 9999, bad, 0));
    report("io_uring_setup", syscall(SYS_io_uring_setup, 0, bad));
    report("fsopen", syscall(SYS_fsopen, bad, 0));
    report("open_tree", syscall(SYS_open_tree, -1, bad, 0));
    report("clone_newns", syscall(SYS_clone, CLONE_NEWNS, bad, bad, bad, 0));
    report("clone_newpid", syscall(SYS_clone, CLONE_NEWPID, bad, bad, bad, 0));
    report("clone3", syscall(SYS_clone3, bad, 0));
    report("personality_query", syscall(SYS_personality, 0xffffffff));
    report("personality_linux32", syscall(SYS_personality, 0x8));
    syscall(SYS_personality, 0);
    report("personality_no_aslr", syscall(SYS_personality, 0x0040000));
    report("ptrace", syscall(SYS_ptrace, 9999, 0, 0, 0));
    long result = int80(21, 1, 1, 1); /* mount on i386 */
    printf("i386_mount %s\n", result < 0 ? strerrorname_np(-result) : "OK");
    result = int80(20, 0, 0, 0); /* getpid on i386 */
    printf("i386_getpid %s\n", result < 0 ? strerrorname_np(-result) : "OK");
    return 0;
}
