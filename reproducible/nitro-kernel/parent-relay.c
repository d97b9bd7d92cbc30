/* The /init of the stand-in *parent instance* in reproducible/nitro-enclave.sh: a QEMU microvm
 * with vsock CID 3, beside the nitro-enclave VM (CID 4), both on one vhost-device-vsock whose
 * sibling routing carries enclave ↔ parent packets. It does on vsock what a real parent EC2
 * instance does for an enclave:
 *   - port 9000: the enclave's boot heartbeat; one byte 0xB7 in, the same byte back (the
 *     nitro-cli protocol; anything else is answered with nothing and logged);
 *   - port P (relay.port=P on the command line): each connection from the enclave is joined
 *     to a new connection to the host (CID 2) on port P, where `dcr-attest vsock-proxy --unix`
 *     listens and forwards to the key-release service. On a real parent, vsock-proxy itself
 *     listens on vsock; here the parent is a VM and the proxy runs on the host.
 * One line per event on the console ("parent-relay: …"). Static (musl-gcc -static); never
 * part of an image. Runs until the VM is killed. */
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define HEARTBEAT_PORT 9000
#define HEARTBEAT 0xB7

static void die(const char *what) {
    printf("parent-relay: FAIL %s: %s\n", what, strerror(errno));
    for (;;) pause();
}

static int listen_on(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket(AF_VSOCK)");
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = VMADDR_CID_ANY;
    a.svm_port = port;
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
    if (listen(s, 16) != 0) die("listen");
    return s;
}

/* Copy until both directions have ended; half-closes are passed on. */
static void splice_both(int a, int b) {
    char buf[65536];
    int open_a = 1, open_b = 1;
    while (open_a || open_b) {
        struct pollfd p[2] = {{a, open_a ? POLLIN : 0, 0}, {b, open_b ? POLLIN : 0, 0}};
        if (poll(p, 2, 600000) <= 0) return; /* 10 minutes idle: give up */
        for (int i = 0; i < 2; i++) {
            int from = i == 0 ? a : b, to = i == 0 ? b : a;
            int *open = i == 0 ? &open_a : &open_b;
            if (!*open || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(from, buf, sizeof buf);
            if (n <= 0) {
                *open = 0;
                shutdown(to, SHUT_WR);
                continue;
            }
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(to, buf + off, (size_t)(n - off));
                if (w <= 0) return;
                off += w;
            }
        }
    }
}

int main(void) {
    mkdir("/dev", 0755);
    mkdir("/proc", 0555);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0 && errno != EBUSY) die("mount /dev");
    if (mount("proc", "/proc", "proc", 0, NULL) != 0) die("mount /proc");
    int con = open("/dev/console", O_WRONLY);
    if (con >= 0) { dup2(con, 1); dup2(con, 2); }
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    signal(SIGPIPE, SIG_IGN);

    char cmdline[4096] = {0};
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0 || read(fd, cmdline, sizeof cmdline - 1) < 0) die("read /proc/cmdline");
    close(fd);
    const char *p = strstr(cmdline, "relay.port=");
    if (!p) { errno = EINVAL; die("relay.port= not on the command line"); }
    unsigned port = (unsigned)strtoul(p + strlen("relay.port="), NULL, 10);
    if (port == 0 || port == HEARTBEAT_PORT) { errno = EINVAL; die("relay.port"); }

    int hb = listen_on(HEARTBEAT_PORT), rl = listen_on(port);
    printf("parent-relay: listening on vsock ports %u (heartbeat) and %u (to 2:%u)\n",
           HEARTBEAT_PORT, port, port);
    for (unsigned n = 0;;) {
        struct pollfd l[2] = {{hb, POLLIN, 0}, {rl, POLLIN, 0}};
        if (poll(l, 2, -1) < 0) { if (errno == EINTR) continue; die("poll"); }
        struct sockaddr_vm peer;
        socklen_t len = sizeof peer;
        if (l[0].revents & POLLIN) {
            int c = accept4(hb, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
            if (c < 0) continue;
            unsigned char b = 0;
            if (read(c, &b, 1) == 1 && b == HEARTBEAT && write(c, &b, 1) == 1)
                printf("parent-relay: heartbeat from cid %u echoed\n", peer.svm_cid);
            else
                printf("parent-relay: heartbeat from cid %u: not 0xB7, not answered\n", peer.svm_cid);
            close(c);
        }
        if (l[1].revents & POLLIN) {
            len = sizeof peer;
            int c = accept4(rl, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
            if (c < 0) continue;
            n++;
            printf("parent-relay: connection %u from cid %u to 2:%u\n", n, peer.svm_cid, port);
            pid_t pid = fork();
            if (pid == 0) {
                int h = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
                struct sockaddr_vm a;
                memset(&a, 0, sizeof a);
                a.svm_family = AF_VSOCK;
                a.svm_cid = VMADDR_CID_HOST;
                a.svm_port = port;
                if (h < 0 || connect(h, (struct sockaddr *)&a, sizeof a) != 0) {
                    printf("parent-relay: connection %u: connect to 2:%u: %s\n", n, port, strerror(errno));
                    _exit(1);
                }
                splice_both(c, h);
                _exit(0);
            }
            close(c);
        }
    }
}
