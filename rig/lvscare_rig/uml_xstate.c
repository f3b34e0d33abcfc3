/*
 * LD_PRELOAD for linux.uml: lets Debian's user-mode-linux boot on hosts whose XSAVE area is larger
 * than the buffer user-mode-linux was built with (Intel AMX today: 11,008 bytes).
 *
 * Why: user-mode-linux restores a guest process's FPU state with
 * ptrace(PTRACE_SETREGSET, pid, NT_X86_XSTATE, {buf, 2696}). The host kernel accepts that call
 * only with the CPU's whole XSAVE size (arch/x86/kernel/fpu/regset.c, xstateregs_set:
 * "count != fpu_user_cfg.max_size" gives EFAULT), so on an AMX host every restore fails and the
 * kernel panics ("userspace - ptrace set fp regs failed, errno = 14"). Debian's 6.1 and 6.12
 * packages both do this; newer upstream kernels size the buffer from CPUID.
 *
 * What: for that one call, when the host's size is larger than the caller's buffer, read the
 * task's whole state, lay the caller's (shorter, same-layout) buffer over its start and set the
 * whole size. The components past the caller's buffer (AMX tile config and data) keep the values
 * the task already has: user-mode-linux never knew them. Every other call, and every call on a
 * host whose size fits, goes through untouched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

/* Larger than any XSAVE area so far (AMX: 11,008): the kernel answers with its own size. */
#define PROBE_SIZE (64 * 1024)

static ptrace_fn real_ptrace;
static size_t host_size;       /* the kernel's NT_X86_XSTATE size; 0 = not known yet */
static unsigned char *scratch; /* host_size bytes, mapped once */

static size_t xstate_size(pid_t pid)
{
    if (host_size == 0) {
        void *buf = mmap(NULL, PROBE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                         -1, 0);
        if (buf == MAP_FAILED)
            return 0;
        struct iovec iov = {buf, PROBE_SIZE};
        if (real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &iov) == 0) {
            host_size = iov.iov_len;
            scratch = buf; /* kept: PROBE_SIZE >= host_size */
        } else {
            munmap(buf, PROBE_SIZE);
        }
    }
    return host_size;
}

long ptrace(enum __ptrace_request request, ...)
{
    va_list ap;
    va_start(ap, request);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);

    if (real_ptrace == NULL)
        real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");

    if (request == PTRACE_SETREGSET && (uintptr_t)addr == NT_X86_XSTATE && data != NULL) {
        const struct iovec *iov = data;
        size_t whole = xstate_size(pid);
        if (whole > iov->iov_len) {
            struct iovec full = {scratch, whole};
            long rc = real_ptrace(PTRACE_GETREGSET, pid, addr, &full);
            if (rc != 0)
                return rc;
            memcpy(scratch, iov->iov_base, iov->iov_len);
            full.iov_len = whole;
            return real_ptrace(PTRACE_SETREGSET, pid, addr, &full);
        }
    }
    return real_ptrace(request, pid, addr, data);
}
