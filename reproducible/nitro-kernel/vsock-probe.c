/* The /init of reproducible/nitro-kernel.sh --check: a kernel built for Nitro boots it under
 * QEMU microvm (acpi=off, so virtio-mmio devices reach the kernel only as
 * virtio_mmio.device= on its command line, as on Nitro). It connects over vsock to the host
 * (CID 2) at the port given as vsock_probe.port=N on the command line, sends one line, reads
 * the host's answer, prints both to the console and reboots (without ACPI there is no power
 * off: the kernel would only halt; QEMU -no-reboot ends on the reboot, as a Nitro enclave
 * does). Any failure prints one line naming the call and reboots. Static (musl-gcc
 * -static); never part of an image. */
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

static void off(void) {
    fflush(stdout);
    sync();
    reboot(RB_AUTOBOOT);
    for (;;) pause();
}

static void fail(const char *what) {
    printf("vsock-probe: FAIL %s: %s\n", what, strerror(errno));
    off();
}

int main(void) {
    mkdir("/dev", 0755);
    mkdir("/proc", 0555);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0 && errno != EBUSY) fail("mount /dev");
    if (mount("proc", "/proc", "proc", 0, NULL) != 0) fail("mount /proc");
    int con = open("/dev/console", O_WRONLY);
    if (con >= 0) { dup2(con, 1); dup2(con, 2); }
    setvbuf(stdout, NULL, _IONBF, 0);

    char cmdline[4096] = {0};
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0 || read(fd, cmdline, sizeof cmdline - 1) < 0) fail("read /proc/cmdline");
    close(fd);
    const char *p = strstr(cmdline, "vsock_probe.port=");
    if (!p) { errno = EINVAL; fail("vsock_probe.port= not on the command line"); }
    unsigned port = (unsigned)strtoul(p + strlen("vsock_probe.port="), NULL, 10);

    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) fail("socket(AF_VSOCK)");
    unsigned cid = 0;
    int dev = open("/dev/vsock", O_RDONLY);
    if (dev >= 0 && ioctl(dev, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) == 0)
        printf("vsock-probe: local cid %u\n", cid);
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = VMADDR_CID_HOST;
    a.svm_port = port;
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) fail("connect to 2:port");
    const char hello[] = "hello from the nitro kernel\n";
    if (write(s, hello, sizeof hello - 1) != (ssize_t)(sizeof hello - 1)) fail("write");
    char buf[256] = {0};
    ssize_t n = read(s, buf, sizeof buf - 1);
    if (n <= 0) { if (n == 0) errno = ECONNRESET; fail("read the host's answer"); }
    buf[strcspn(buf, "\n")] = 0;
    printf("vsock-probe: OK connected to 2:%u, the host answered \"%s\"\n", port, buf);
    off();
    return 0;
}
